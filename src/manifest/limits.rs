//! The limits a manifest is held to that are set by what runs it: the longest wait between
//! retries, and what one ACI container group can be given. They live here, below both, so
//! that validation says `Invalid` with the very numbers the controller and the aci runtime
//! act on, without the manifest layer importing either of them.

use std::time::Duration;

/// Longest delay between retries, whatever `backoff` and the attempt count say.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// The most one Linux ACI container group may ask for in most regions; ARM answers an
/// opaque `400 ProviderFailed` beyond, so requests are checked first
/// ([`aci_resource_problems`]).
pub const ACI_MAX_CPU: f64 = 4.0;
pub const ACI_MAX_MEMORY_GB: f64 = 16.0;

/// What ACI cannot give one container of `cpu` cores and `memory_bytes` of memory
/// (`None`: the defaults), each problem naming its field and the limit: for validation
/// (`Invalid`, every problem at once) and for the aci runtime's `ensure` (a request never
/// goes to ARM to come back as an opaque `400 ProviderFailed`). Empty when ACI can.
pub fn aci_resource_problems(cpu: Option<f64>, memory_bytes: Option<u64>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(cpu) = cpu
        && !(cpu > 0.0 && cpu <= ACI_MAX_CPU)
    {
        problems.push(format!(
            "spec.resources.cpu: {cpu} cores is not what an ACI container group can have; ask for more than 0 and at most {ACI_MAX_CPU}"
        ));
    }
    if let Some(bytes) = memory_bytes {
        let gb = aci_memory_gb(bytes);
        if bytes == 0 || gb > ACI_MAX_MEMORY_GB {
            problems.push(format!(
                "spec.resources.memory: {gb} GB is not what an ACI container group can have; ask for more than 0 and at most {ACI_MAX_MEMORY_GB}Gi"
            ));
        }
    }
    problems
}

/// Bytes → ACI's `memoryInGB`, which counts in tenths of a GiB (`1.5Gi` → 1.5): rounded
/// up, so that a container never gets less than it asked for.
pub fn aci_memory_gb(bytes: u64) -> f64 {
    const GIB: u128 = 1 << 30;
    let tenths = (u128::from(bytes) * 10).div_ceil(GIB);
    tenths as f64 / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_counts_in_tenths_of_a_gib_rounded_up() {
        assert_eq!(aci_memory_gb(1_610_612_736), 1.5);
        assert_eq!(aci_memory_gb(512 << 20), 0.5);
        assert_eq!(aci_memory_gb(1_000_000_000), 1.0);
        assert_eq!(aci_memory_gb(1), 0.1);
    }

    #[test]
    fn resources_beyond_aci_are_refused_with_the_limit() {
        assert!(aci_resource_problems(None, None).is_empty());
        assert!(aci_resource_problems(Some(4.0), Some(16 << 30)).is_empty());
        let problems = aci_resource_problems(Some(8.0), Some(32 << 30));
        assert!(problems[0].contains("spec.resources.cpu") && problems[0].contains("at most 4"));
        assert!(problems[1].contains("spec.resources.memory") && problems[1].contains("at most 16Gi"));
        assert_eq!(aci_resource_problems(Some(0.0), Some(0)).len(), 2);
    }
}
