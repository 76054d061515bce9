#!/usr/bin/env bash
# Creates (or completes) the Microsoft Entra app registration grantbridge signs in as: the application, its
# service principal, exactly the Microsoft Graph application permissions the chosen grant kinds need, admin
# consent, a credential, and optionally the Azure RBAC role for azure_rbac grants. docs/entra.md explains each
# step. Run it with the Azure CLI signed in (`az login`) as a Global Administrator or Privileged Role
# Administrator (admin consent to Microsoft Graph application permissions needs one of them), and, for
# AZURE_RBAC_SCOPE, as someone who may assign roles at that scope. Running it again is safe: it reuses what
# exists.
#
# Parameters (environment variables):
#   APP_NAME              display name of the app registration                  default: grantbridge
#   GRANT_KINDS           the grant kinds your policy uses, space-separated:     default: group_member
#                         group_member pim_group pim_role azure_rbac
#   CREDENTIAL            federated | certificate | secret | none                default: federated
#     federated:          AKS_CLUSTER + AKS_RESOURCE_GROUP (the issuer is read from the cluster), or OIDC_ISSUER;
#                         K8S_NAMESPACE (default grantbridge), K8S_SERVICE_ACCOUNT (default grantbridge)
#     certificate:        CERT_FILE, a PEM certificate (public part only) to register on the app
#     secret:             SECRET_FILE, where to write the new client secret (created with mode 0600);
#                         SECRET_YEARS (default 1)
#   AZURE_RBAC_SCOPE      for azure_rbac: the scope, e.g. /subscriptions/<id>/resourceGroups/<name>
#   AZURE_RBAC_ROLE_IDS   for azure_rbac: comma-separated role definition ids grantbridge may assign there
#                         (e.g. b24988ac-6180-42a0-ab88-20f7382dd24c for Contributor); the condition on the
#                         role assignment allows only these roles, and only to users
#
# Example (AKS with workload identity, group membership and PIM for Groups):
#   GRANT_KINDS="group_member pim_group" AKS_CLUSTER=aks-prod AKS_RESOURCE_GROUP=rg-aks \
#     K8S_NAMESPACE=grantbridge deploy/entra/create-app.sh
set -euo pipefail

APP_NAME="${APP_NAME:-grantbridge}"
GRANT_KINDS="${GRANT_KINDS:-group_member}"
CREDENTIAL="${CREDENTIAL:-federated}"
K8S_NAMESPACE="${K8S_NAMESPACE:-grantbridge}"
K8S_SERVICE_ACCOUNT="${K8S_SERVICE_ACCOUNT:-grantbridge}"
SECRET_YEARS="${SECRET_YEARS:-1}"

# Microsoft Graph's application id, the same in every tenant.
readonly GRAPH_APP_ID="00000003-0000-0000-c000-000000000000"
# The built-in Azure role "Role Based Access Control Administrator".
readonly RBAC_ADMIN_ROLE_ID="f58310d9-a9f6-439a-9e8d-f62e7b41a168"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is not installed"

# --- Which Microsoft Graph application permissions -----------------------------------------------------------
# Deciding always needs User.Read.All (finding the receiver and the approvers) and GroupMember.Read.All
# (approver_group, group_name, and the group check before PIM group grants); GroupMember.ReadWrite.All, needed to
# change memberships, includes that read.
permissions=("User.Read.All")
group_permission="GroupMember.Read.All"
rbac=false
for kind in $GRANT_KINDS; do
  case "$kind" in
    group_member) group_permission="GroupMember.ReadWrite.All" ;;
    pim_group) permissions+=("PrivilegedAssignmentSchedule.ReadWrite.AzureADGroup") ;;
    pim_role) permissions+=("RoleAssignmentSchedule.ReadWrite.Directory") ;;
    azure_rbac) rbac=true ;;
    *) die "unknown grant kind '$kind' in GRANT_KINDS (group_member, pim_group, pim_role, azure_rbac)" ;;
  esac
done
permissions+=("$group_permission")

if [[ "$rbac" == true ]]; then
  [[ -n "${AZURE_RBAC_SCOPE:-}" ]] || die "azure_rbac needs AZURE_RBAC_SCOPE"
  [[ -n "${AZURE_RBAC_ROLE_IDS:-}" ]] || die "azure_rbac needs AZURE_RBAC_ROLE_IDS (the roles grantbridge may assign)"
fi
case "$CREDENTIAL" in
  federated)
    if [[ -z "${OIDC_ISSUER:-}" ]]; then
      [[ -n "${AKS_CLUSTER:-}" && -n "${AKS_RESOURCE_GROUP:-}" ]] ||
        die "CREDENTIAL=federated needs OIDC_ISSUER, or AKS_CLUSTER and AKS_RESOURCE_GROUP"
    fi
    ;;
  certificate) [[ -r "${CERT_FILE:-}" ]] || die "CREDENTIAL=certificate needs CERT_FILE, a readable PEM certificate" ;;
  secret) [[ -n "${SECRET_FILE:-}" ]] || die "CREDENTIAL=secret needs SECRET_FILE, where to write the secret" ;;
  none) ;;
  *) die "CREDENTIAL must be federated, certificate, secret or none, not '$CREDENTIAL'" ;;
esac

TENANT_ID="$(az account show --query tenantId -o tsv)"
[[ -n "$TENANT_ID" ]] || die "not signed in: run az login"

# --- The application and its service principal -------------------------------------------------------------
APP_ID="$(az ad app list --display-name "$APP_NAME" --query "[0].appId" -o tsv)"
if [[ -z "$APP_ID" ]]; then
  log "creating the app registration $APP_NAME"
  APP_ID="$(az ad app create --display-name "$APP_NAME" --sign-in-audience AzureADMyOrg --query appId -o tsv)"
else
  log "the app registration $APP_NAME exists: $APP_ID"
fi
SP_ID="$(az ad sp list --filter "appId eq '$APP_ID'" --query "[0].id" -o tsv)"
if [[ -z "$SP_ID" ]]; then
  log "creating its service principal"
  SP_ID="$(az ad sp create --id "$APP_ID" --query id -o tsv)"
fi

# --- Microsoft Graph application permissions, looked up by name, and admin consent -----------------------------
for permission in "${permissions[@]}"; do
  role_id="$(az ad sp show --id "$GRAPH_APP_ID" --query "appRoles[?value=='$permission'].id | [0]" -o tsv)"
  [[ -n "$role_id" ]] || die "Microsoft Graph has no application permission named $permission"
  log "requesting $permission ($role_id)"
  az ad app permission add --id "$APP_ID" --api "$GRAPH_APP_ID" --api-permissions "$role_id=Role" --only-show-errors
done

log "granting admin consent"
consented=false
for attempt in 1 2 3 4 5 6; do
  # A new service principal takes a little while to reach every replica of the directory.
  if az ad app permission admin-consent --id "$APP_ID" --only-show-errors; then
    consented=true
    break
  fi
  log "admin consent failed (attempt $attempt); retrying in 10 s"
  sleep 10
done
[[ "$consented" == true ]] ||
  die "admin consent did not succeed: grant it in the Entra admin center (App registrations > $APP_NAME > API permissions)"

# --- The credential --------------------------------------------------------------------------------------------
case "$CREDENTIAL" in
  federated)
    if [[ -z "${OIDC_ISSUER:-}" ]]; then
      OIDC_ISSUER="$(az aks show --name "$AKS_CLUSTER" --resource-group "$AKS_RESOURCE_GROUP" \
        --query oidcIssuerProfile.issuerUrl -o tsv)"
      [[ -n "$OIDC_ISSUER" ]] || die "cluster $AKS_CLUSTER has no OIDC issuer: az aks update --enable-oidc-issuer --enable-workload-identity"
    fi
    subject="system:serviceaccount:${K8S_NAMESPACE}:${K8S_SERVICE_ACCOUNT}"
    name="grantbridge-${K8S_NAMESPACE}"
    existing="$(az ad app federated-credential list --id "$APP_ID" --query "[?name=='$name'].name | [0]" -o tsv)"
    if [[ -z "$existing" ]]; then
      log "adding the federated credential $name for $subject"
      az ad app federated-credential create --id "$APP_ID" --only-show-errors --output none --parameters \
        "{\"name\":\"$name\",\"issuer\":\"$OIDC_ISSUER\",\"subject\":\"$subject\",\"audiences\":[\"api://AzureADTokenExchange\"],\"description\":\"grantbridge pods on AKS (workload identity)\"}"
    else
      log "the federated credential $name exists"
    fi
    ;;
  certificate)
    log "adding the certificate $CERT_FILE to the app"
    az ad app credential reset --id "$APP_ID" --cert "@$CERT_FILE" --append --only-show-errors --output none
    ;;
  secret)
    log "adding a client secret, written to $SECRET_FILE"
    (
      umask 077
      az ad app credential reset --id "$APP_ID" --append --display-name "grantbridge $(date -u +%Y-%m-%d)" \
        --years "$SECRET_YEARS" --query password -o tsv --only-show-errors >"$SECRET_FILE"
    )
    ;;
  none) ;;
esac

# --- Azure RBAC: a role-assignment administrator limited to the declared roles, and to users ---------------------
if [[ "$rbac" == true ]]; then
  roles="${AZURE_RBAC_ROLE_IDS//,/, }"
  condition="((!(ActionMatches{'Microsoft.Authorization/roleAssignments/write'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {$roles} AND @Request[Microsoft.Authorization/roleAssignments:PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {'User'})) AND ((!(ActionMatches{'Microsoft.Authorization/roleAssignments/delete'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {$roles} AND @Resource[Microsoft.Authorization/roleAssignments:PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {'User'}))"
  log "assigning Role Based Access Control Administrator at $AZURE_RBAC_SCOPE, limited to $AZURE_RBAC_ROLE_IDS"
  az role assignment create --assignee-object-id "$SP_ID" --assignee-principal-type ServicePrincipal \
    --role "$RBAC_ADMIN_ROLE_ID" --scope "$AZURE_RBAC_SCOPE" \
    --condition "$condition" --condition-version "2.0" \
    --description "grantbridge: assigns only the roles its policy declares" --only-show-errors --output none
fi

# --- What to put in grantbridge.toml ----------------------------------------------------------------------------
log "done"
cat <<EOF

Application (client) id: $APP_ID
Directory (tenant) id:   $TENANT_ID
Service principal id:    $SP_ID
Graph permissions:       ${permissions[*]}

EOF
case "$CREDENTIAL" in
  federated)
    cat <<EOF
[entra]
federated = true
# and on the Kubernetes service account $K8S_NAMESPACE/$K8S_SERVICE_ACCOUNT:
#   azure.workload.identity/client-id: "$APP_ID"
EOF
    ;;
  certificate)
    cat <<EOF
[entra]
tenant_id = "$TENANT_ID"
client_id = "$APP_ID"
certificate = { file = "/path/to/certificate-and-key.pem" }
private_key = { file = "/path/to/certificate-and-key.pem" }
EOF
    ;;
  secret)
    cat <<EOF
[entra]
tenant_id = "$TENANT_ID"
client_id = "$APP_ID"
client_secret = { file = "$SECRET_FILE" }
EOF
    ;;
  none) ;;
esac
