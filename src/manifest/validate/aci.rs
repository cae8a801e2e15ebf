//! ACI's rules: what an ACI container group cannot be given (resources beyond
//! [`crate::manifest::limits`], a working directory, args without a command), azureFile
//! volumes' account, share and key, and `spec.aci` (only on aci; its location).

use super::AciExtras;
use super::context::ValidationContext;
use super::secrets::{SUBNET_TYPE, check_identity_id, is_arm_id};
use super::values::is_env_name;
use crate::manifest::limits::aci_resource_problems;
use crate::manifest::wire::{AciDnsConfig, AciIdentityType, RuntimeKind, Spec};

/// ACI's rules for a task on `runtime` (nothing but `spec.aci`'s misplacement when it is
/// not aci). The task's own location, if it names one, and its identity and subnets.
pub(super) fn rules(
    spec: &Spec,
    runtime: RuntimeKind,
    cpu: Option<f64>,
    memory_bytes: Option<u64>,
    ctx: &ValidationContext<'_>,
    fail: &mut impl FnMut(String),
) -> (Option<String>, AciExtras) {
    let mut aci_location = None;
    let mut extras = AciExtras::default();
    if runtime == RuntimeKind::Aci {
        // What ARM would refuse with an opaque 400, or ACI cannot do at all, is said here.
        for problem in aci_resource_problems(cpu, memory_bytes) {
            fail(problem);
        }
        if spec.working_dir.is_some() {
            fail("spec.workingDir: ACI cannot set a container's working directory; remove it and cd in the command, e.g. [sh, -c, \"cd /work && ...\"]".into());
        }
        if spec.command.is_empty() && !spec.args.is_empty() {
            fail("spec.args: ACI replaces the image's entrypoint and arguments together; give spec.command too".into());
        }
        for (i, volume) in spec.volumes.iter().enumerate() {
            let Some(file) = &volume.azure_file else { continue };
            let at = format!("spec.volumes[{i}].azureFile");
            let account = &file.storage_account_name;
            if !(3..=24).contains(&account.len())
                || !account.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                fail(format!(
                    "{at}.storageAccountName: {account:?} is not a storage account name (3 to 24 lowercase letters and digits)"
                ));
            }
            let share = &file.share_name;
            if !(3..=63).contains(&share.len())
                || !share
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                || share.starts_with('-')
                || share.ends_with('-')
                || share.contains("--")
            {
                fail(format!(
                    "{at}.shareName: {share:?} is not a file share name (3 to 63 lowercase letters, digits and single dashes)"
                ));
            }
            let Some(key) = &file.storage_account_key_from.env else {
                fail(format!(
                    "{at}.storageAccountKeyFrom: takes `env: VARIABLE` (the storage key from the controller's environment); keyVault is not supported here"
                ));
                continue;
            };
            if file.storage_account_key_from.key_vault.is_some() {
                fail(format!(
                    "{at}.storageAccountKeyFrom: has both env and keyVault; keep env"
                ));
            }
            if !is_env_name(key) {
                fail(format!(
                    "{at}.storageAccountKeyFrom.env: {key:?} is not a valid variable name"
                ));
            } else if let Some(is_set) = ctx.env_is_set
                && !is_set(key)
            {
                fail(format!(
                    "{at}.storageAccountKeyFrom.env: {key} is not set in the controller's environment; export it before starting skiff"
                ));
            }
        }
    }
    if let Some(aci) = &spec.aci {
        if runtime != RuntimeKind::Aci {
            fail(format!(
                "spec.aci: is for the aci runtime only; remove it (this task runs on {runtime})"
            ));
        }
        if let Some(subscription) = &aci.subscription_id {
            let s = subscription.trim();
            let guid = s.len() == 36
                && s.char_indices().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if guid {
                extras.subscription_id = Some(s.to_string());
            } else {
                fail(format!(
                    "spec.aci.subscriptionId: {subscription:?} is not a subscription id (a GUID, e.g. 00000000-0000-0000-0000-000000000000; az account show --query id)"
                ));
            }
        }
        if let Some(group) = &aci.resource_group {
            let g = group.trim();
            let good = (1..=90).contains(&g.len())
                && g.chars().all(|c| c.is_alphanumeric() || "-_.()".contains(c))
                && !g.ends_with('.');
            if good {
                extras.resource_group = Some(g.to_string());
            } else {
                fail(format!(
                    "spec.aci.resourceGroup: {group:?} is not a resource group name (1 to 90 letters, digits, '-', '_', '.', '(' or ')', not ending with '.')"
                ));
            }
        }
        if let Some(location) = &aci.location {
            if location.is_empty() || !location.bytes().all(|b| b.is_ascii_alphanumeric()) {
                fail(format!(
                    "spec.aci.location: {location:?} is not an Azure region name, e.g. westus2"
                ));
            } else {
                aci_location = Some(location.to_ascii_lowercase());
            }
        }
        if let Some(identity) = &aci.identity {
            let at = "spec.aci.identity";
            match identity.kind {
                AciIdentityType::SystemAssigned if !identity.user_assigned_identities.is_empty() => fail(format!(
                    "{at}.userAssignedIdentities: go with `type: UserAssigned`; remove them or change the type"
                )),
                AciIdentityType::UserAssigned if identity.user_assigned_identities.is_empty() => fail(format!(
                    "{at}.userAssignedIdentities: `type: UserAssigned` needs at least one identity's ARM id"
                )),
                _ => {}
            }
            for (i, id) in identity.user_assigned_identities.iter().enumerate() {
                check_identity_id(id, &format!("{at}.userAssignedIdentities[{i}]"), fail);
            }
            extras.identity = Some(identity.clone());
        }
        for (i, id) in aci.subnet_ids.iter().enumerate() {
            if !is_arm_id(id, SUBNET_TYPE) {
                fail(format!(
                    "spec.aci.subnetIds[{i}]: {id:?} is not a subnet's ARM id; write /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/VNET/subnets/NAME"
                ));
            }
        }
        extras.subnet_ids = aci.subnet_ids.clone();
        if let Some(dns) = &aci.dns_config {
            check_dns_config(dns, fail);
            extras.dns_config = Some(dns.clone());
        }
        if let Some(text) = &aci.start_timeout {
            match super::values::parse_duration(text) {
                Ok(d) if !d.is_zero() => extras.start_timeout = Some(d),
                _ => fail(format!(
                    "spec.aci.startTimeout: {text:?} is not a duration longer than zero; write e.g. 15m"
                )),
            }
        }
    }
    (aci_location, extras)
}

/// `spec.aci.dnsConfig`: name servers are IP addresses (ACI takes no host names there),
/// search domains are DNS names, options single words (ACI joins both with spaces).
fn check_dns_config(dns: &AciDnsConfig, fail: &mut impl FnMut(String)) {
    let at = "spec.aci.dnsConfig";
    if dns.name_servers.is_empty() {
        fail(format!(
            "{at}.nameServers: give at least one DNS server's IP address, e.g. [10.0.0.4]"
        ));
    }
    for (i, server) in dns.name_servers.iter().enumerate() {
        if server.trim().parse::<std::net::IpAddr>().is_err() {
            fail(format!(
                "{at}.nameServers[{i}]: {server:?} is not an IP address; write e.g. 10.0.0.4"
            ));
        }
    }
    for (i, domain) in dns.search_domains.iter().enumerate() {
        let labels_ok = domain
            .trim_end_matches('.')
            .split('.')
            .all(|l| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if domain.is_empty() || domain.len() > 253 || !labels_ok {
            fail(format!(
                "{at}.searchDomains[{i}]: {domain:?} is not a domain name; write one per entry, e.g. corp.example.com"
            ));
        }
    }
    for (i, option) in dns.options.iter().enumerate() {
        if option.is_empty() || option.chars().any(char::is_whitespace) {
            fail(format!(
                "{at}.options[{i}]: {option:?} is not one resolver option; write one per entry, e.g. ndots:2"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(dns: AciDnsConfig) -> Vec<String> {
        let mut found = Vec::new();
        check_dns_config(&dns, &mut |p| found.push(p));
        found
    }

    #[test]
    fn dns_config_names_the_field_and_the_fix() {
        let good = AciDnsConfig {
            name_servers: vec!["10.0.0.4".into(), "fd00::53".into()],
            search_domains: vec!["corp.example.com".into()],
            options: vec!["ndots:2".into()],
        };
        assert!(problems(good).is_empty());
        let found = problems(AciDnsConfig {
            name_servers: vec!["dns.example.com".into()],
            search_domains: vec!["a.example b.example".into()],
            options: vec!["ndots:2 timeout:1".into()],
        });
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("spec.aci.dnsConfig.nameServers[0]: \"dns.example.com\" is not an IP address"));
        assert!(found[1].contains("searchDomains[0]") && found[1].contains("one per entry"));
        assert!(found[2].contains("options[0]") && found[2].contains("ndots:2"));
        let found = problems(AciDnsConfig::default());
        assert!(found[0].contains("at least one"), "{found:?}");
    }
}
