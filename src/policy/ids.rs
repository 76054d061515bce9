//! Shapes of the identifiers a policy names: Entra object ids, ARM scopes, directory scopes, rule names.
//!
//! Each returns the canonical spelling (lower-case GUIDs, ARM keywords in their documented case), so that two
//! spellings of one target compare equal when plans are de-duplicated and checked against the policy.

/// An Entra object or role definition id: a GUID, 8-4-4-4-12 hex digits. Returns it in lower case.
pub(crate) fn guid(s: &str) -> Option<String> {
    let groups: Vec<&str> = s.split('-').collect();
    let shape_ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()));
    shape_ok.then(|| s.to_ascii_lowercase())
}

/// Rule names: what the plan, the ledger and ticket comments call a rule; kept plain so they quote cleanly.
pub(crate) fn valid_rule_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

const ARM_FORMS: &str = "expected /subscriptions/<guid>[/resourceGroups/<name>[/providers/<Namespace>/<type>/<name>...]] \
     or /providers/Microsoft.Management/managementGroups/<id>";

/// An Azure Resource Manager scope for a role assignment, in canonical spelling.
///
/// Names are held to the characters Azure allows in resource group and management group names, which also keeps
/// anything that could change the meaning of the URL the executor builds (`?`, `#`, `%`, `..`, spaces) out.
pub(crate) fn arm_scope(s: &str) -> Result<String, String> {
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!("an Azure scope starts with `/`: {ARM_FORMS}"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|seg| seg.is_empty()) {
        return Err(format!("empty path segment (a doubled or trailing `/`): {ARM_FORMS}"));
    }
    let is = |seg: &str, word: &str| seg.eq_ignore_ascii_case(word);
    match segments.as_slice() {
        [p, ns, mg, id] if is(p, "providers") && is(ns, "Microsoft.Management") && is(mg, "managementGroups") => {
            if !valid_arm_name(id) {
                return Err(format!("`{id}` is not a management group id (1-90 of a-z, 0-9, - _ . ( ))"));
            }
            Ok(format!("/providers/Microsoft.Management/managementGroups/{id}"))
        }
        [subs, sub, rest @ ..] if is(subs, "subscriptions") => {
            let Some(sub) = guid(sub) else {
                return Err(format!("`{sub}` is not a subscription id (a GUID): {ARM_FORMS}"));
            };
            let mut out = format!("/subscriptions/{sub}");
            match rest {
                [] => {}
                [rgs, rg, provider @ ..] if is(rgs, "resourceGroups") => {
                    if !valid_arm_name(rg) {
                        return Err(format!("`{rg}` is not a resource group name (1-90 of a-z, 0-9, - _ . ( ))"));
                    }
                    out.push_str(&format!("/resourceGroups/{rg}"));
                    match provider {
                        [] => {}
                        [p, namespace, path @ ..] if is(p, "providers") => {
                            if !valid_namespace(namespace) {
                                return Err(format!("`{namespace}` is not a resource provider namespace"));
                            }
                            if path.is_empty() || path.len() % 2 != 0 {
                                return Err(format!(
                                    "after the provider namespace come <type>/<name> pairs: {ARM_FORMS}"
                                ));
                            }
                            if let Some(bad) = path.iter().find(|seg| !valid_arm_name(seg)) {
                                return Err(format!("`{bad}` is not a resource type or name this bridge accepts"));
                            }
                            out.push_str(&format!("/providers/{namespace}/{}", path.join("/")));
                        }
                        _ => {
                            return Err(format!(
                                "after the resource group only /providers/... may follow: {ARM_FORMS}"
                            ));
                        }
                    }
                }
                _ => return Err(format!("after the subscription only /resourceGroups/<name> may follow: {ARM_FORMS}")),
            }
            Ok(out)
        }
        [] | [_] => Err(format!("`/` alone (or a bare word) is not an assignable scope: {ARM_FORMS}")),
        _ => Err(format!("not an Azure Resource Manager scope: {ARM_FORMS}")),
    }
}

fn valid_arm_name(name: &str) -> bool {
    (1..=90).contains(&name.len())
        && !name.ends_with('.')
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'))
}

fn valid_namespace(ns: &str) -> bool {
    ns.contains('.') && ns.split('.').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// A PIM directory role scope: `/` (the tenant), `/administrativeUnits/<guid>`, or `/<guid>` (one object, such
/// as an application).
pub(crate) fn directory_scope(s: &str) -> Result<String, String> {
    const FORMS: &str = "expected `/`, `/administrativeUnits/<guid>` or `/<object guid>`";
    if s == "/" {
        return Ok(s.to_string());
    }
    let Some(rest) = s.strip_prefix('/') else { return Err(format!("a directory scope starts with `/`: {FORMS}")) };
    match rest.split_once('/') {
        Some((au, id)) if au.eq_ignore_ascii_case("administrativeUnits") => match guid(id) {
            Some(id) => Ok(format!("/administrativeUnits/{id}")),
            None => Err(format!("`{id}` is not an administrative unit id (a GUID)")),
        },
        Some(_) => Err(FORMS.to_string()),
        None => guid(rest).map(|id| format!("/{id}")).ok_or_else(|| FORMS.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn guids() {
        assert_eq!(guid("0F8FAD5B-D9CB-469F-A165-70867728950E").as_deref(), Some(G));
        for bad in [
            "",
            "0f8fad5b",
            "0f8fad5bd9cb469fa16570867728950e",
            "{0f8fad5b-d9cb-469f-a165-70867728950e}",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
            "0f8fad5b-d9cb-469f-a165-70867728950e-",
            "0f8fad5b-d9cb-469f-a16-570867728950e",
        ] {
            assert_eq!(guid(bad), None, "{bad}");
        }
    }

    #[test]
    fn arm_scopes() {
        let ok = [
            (format!("/subscriptions/{G}"), format!("/subscriptions/{G}")),
            (
                format!("/SUBSCRIPTIONS/{}/resourcegroups/rg-app_1", G.to_uppercase()),
                format!("/subscriptions/{G}/resourceGroups/rg-app_1"),
            ),
            (
                format!("/subscriptions/{G}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"),
                format!("/subscriptions/{G}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"),
            ),
            (
                "/providers/microsoft.management/managementgroups/mg-prod".to_string(),
                "/providers/Microsoft.Management/managementGroups/mg-prod".to_string(),
            ),
        ];
        for (input, want) in ok {
            assert_eq!(arm_scope(&input), Ok(want), "{input}");
        }
        for bad in [
            "".to_string(),
            "/".to_string(),
            "subscriptions/x".to_string(),
            "/subscriptions/not-a-guid".to_string(),
            format!("/subscriptions/{G}/"),
            format!("/subscriptions/{G}//resourceGroups/rg"),
            format!("/subscriptions/{G}/resourceGroups/rg."),
            format!("/subscriptions/{G}/resourceGroups/r g"),
            format!("/subscriptions/{G}/resourceGroups/rg?api-version=1"),
            format!("/subscriptions/{G}/resourceGroups/rg/providers/Microsoft.KeyVault"),
            format!("/subscriptions/{G}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults"),
            format!("/subscriptions/{G}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/../x"),
            format!("/subscriptions/{G}/locations/westeurope"),
            "/providers/Microsoft.Management/managementGroups".to_string(),
            "/tenants/x".to_string(),
        ] {
            assert!(arm_scope(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn directory_scopes() {
        assert_eq!(directory_scope("/"), Ok("/".to_string()));
        assert_eq!(directory_scope(&format!("/administrativeunits/{G}")), Ok(format!("/administrativeUnits/{G}")));
        assert_eq!(directory_scope(&format!("/{}", G.to_uppercase())), Ok(format!("/{G}")));
        for bad in ["", "//", "/x", "administrativeUnits/x", "/administrativeUnits/x", "/users/x"] {
            assert!(directory_scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rule_names() {
        assert!(valid_rule_name("portal-access"));
        assert!(valid_rule_name("a_1"));
        for bad in ["", "-a", "Portal", "a b", "a.b", &"a".repeat(64)] {
            assert!(!valid_rule_name(bad), "{bad}");
        }
    }
}
