/*
 * grantbridge: a signed webhook for every approval decision or state change of a requested item (RITM).
 *
 * Business rule (System Definition > Business Rules > New):
 *   Name:       grantbridge webhook
 *   Table:      Requested Item [sc_req_item]
 *   Advanced:   checked
 *   When:       after        Update: checked (Insert, Delete, Query: unchecked)
 *   Condition:  current.approval.changesTo('approved') || current.approval.changesTo('rejected') || current.state.changes()
 *   Script:     this file
 *
 * System properties (sys_properties.list > New), in the same application scope as this rule:
 *   x_grantbridge.webhook_url     Type: string
 *                                 e.g. https://grantbridge.example.com/webhooks/servicenow
 *   x_grantbridge.webhook_secret  Type: password2 (two-way encrypted: stored encrypted, masked on the form;
 *                                 gs.getProperty() returns the clear value to server scripts).
 *                                 The same value grantbridge reads from SERVICENOW_WEBHOOK_SECRET. Use ASCII
 *                                 only, e.g. the output of `openssl rand -base64 32`.
 *
 * What grantbridge checks (the `servicenow` source of examples/quickstart.toml):
 *   scheme = "hmac_sha256", header = "X-Signature", encoding = "base64",
 *   timestamp_header = "X-Timestamp", tolerance_secs = 300
 *   X-Signature = base64(HMAC-SHA256(secret, X-Timestamp + "." + body)), and X-Timestamp (Unix seconds)
 *   within 300 seconds of grantbridge's clock.
 *
 * This is a global-scope script: GlideCertificateEncryption and GlideStringUtil are global APIs. In a scoped
 * application use their scoped equivalents, CertificateEncryption (same generateMac arguments) and gs.base64Encode().
 *
 * RESTMessageV2 does not retry. grantbridge answers 503 with Retry-After when it cannot store an event; to have
 * such deliveries retried, send from a Flow Designer / IntegrationHub REST step with a retry policy instead.
 */
(function executeRule(current, previous /* null when async */) {
    var url = gs.getProperty('x_grantbridge.webhook_url');
    var secret = gs.getProperty('x_grantbridge.webhook_secret');
    if (!url || !secret) {
        gs.error('grantbridge webhook not sent for ' + current.getValue('number') +
            ': set the system properties x_grantbridge.webhook_url and x_grantbridge.webhook_secret');
        return;
    }

    var payload = {
        table: current.getTableName(),
        sys_id: current.getUniqueValue(),
        number: current.getValue('number'),
        request: current.request.getDisplayValue(),
        cat_item: current.cat_item.getDisplayValue(),
        requested_for: userOf(current.requested_for),
        opened_by: userOf(current.opened_by),
        approval: current.getValue('approval'),
        state: current.getValue('state'),
        stage: current.getValue('stage'),
        sys_updated_on: current.getValue('sys_updated_on'),
        variables: variablesOf(current),
        approvers: approversOf(current)
    };
    var body = asciiJson(payload);

    // Unix seconds. The signed content is "<timestamp>.<body>"; grantbridge refuses it outside its window.
    var timestamp = String(Math.floor(new GlideDateTime().getNumericValue() / 1000));
    // generateMac takes the key base64-encoded and returns the MAC base64-encoded.
    var key = GlideStringUtil.base64Encode(secret);
    var signature = new GlideCertificateEncryption().generateMac(key, 'HmacSHA256', timestamp + '.' + body);

    var request = new sn_ws.RESTMessageV2();
    request.setEndpoint(url);
    request.setHttpMethod('post');
    request.setRequestHeader('Content-Type', 'application/json');
    request.setRequestHeader('X-Timestamp', timestamp);
    request.setRequestHeader('X-Signature', signature);
    request.setRequestBody(body);
    // If grantbridge is only reachable from inside your network, send through a MID Server:
    // request.setMIDServer('<MID Server name>');
    request.executeAsync();

    /** The user a reference field points to, or null when it is empty. */
    function userOf(element) {
        if (element.nil()) {
            return null;
        }
        var user = element.getRefRecord();
        if (!user.isValidRecord()) {
            return { sys_id: element.toString(), user_name: null, email: null };
        }
        return { sys_id: user.getUniqueValue(), user_name: user.getValue('user_name'), email: user.getValue('email') };
    }

    /** Who was asked to approve the item and what each decided (grantbridge confirms this with the Table API). */
    function approversOf(record) {
        var approvers = [];
        var approval = new GlideRecord('sysapproval_approver');
        approval.addQuery('sysapproval', record.getUniqueValue());
        approval.query();
        while (approval.next()) {
            var approver = userOf(approval.approver);
            if (approver) {
                approver.state = approval.getValue('state');
                approvers.push(approver);
            }
        }
        return approvers;
    }

    /** Every named catalog variable of the item, name -> stored value (a sys_id for reference variables). */
    function variablesOf(record) {
        var variables = {};
        for (var name in record.variables) {
            variables[name] = String(record.variables[name]);
        }
        return variables;
    }

    /**
     * JSON with every non-ASCII character written as a \uXXXX escape. The string that is signed and the bytes
     * that are sent are then identical whatever character set the platform uses to encode them.
     */
    function asciiJson(value) {
        return JSON.stringify(value).replace(/[\u007f-\uffff]/g, function (c) {
            return '\\u' + ('0000' + c.charCodeAt(0).toString(16)).slice(-4);
        });
    }
})(current, previous);
