//! Applies the spec's capability sets with the `caps` crate, in runc's order: bounding set
//! before the uid switch (dropping needs CAP_SETPCAP), the rest after it.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::failure::InitFailure;

/// The spec's sets converted to the `caps` crate's type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CapabilitySets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

impl CapabilitySets {
    /// Converts the spec; a missing `capabilities` object means none at all (the OCI
    /// default), and names this kernel does not know are left out, as runc does.
    pub fn from_spec(spec: Option<&LinuxCapabilities>) -> Self {
        let Some(spec) = spec else {
            return CapabilitySets::default();
        };
        let supported = caps::runtime::thread_all_supported();
        let convert = |set: &Option<Capabilities>| -> CapsHashSet {
            set.iter()
                .flatten()
                .filter_map(to_caps_capability)
                .filter(|c| supported.contains(c))
                .collect()
        };
        CapabilitySets {
            bounding: convert(spec.bounding()),
            effective: convert(spec.effective()),
            permitted: convert(spec.permitted()),
            inheritable: convert(spec.inheritable()),
            ambient: convert(spec.ambient()),
        }
    }

    /// Drops every supported capability outside the bounding set.
    pub fn apply_bounding(&self) -> Result<(), InitFailure> {
        for cap in caps::runtime::thread_all_supported() {
            if !self.bounding.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| {
                    InitFailure::new(format!("drop {cap} from the bounding set"), e.to_string())
                })?;
            }
        }
        Ok(())
    }

    /// Sets permitted, inheritable, effective and ambient (after the uid switch).
    pub fn apply_process_sets(&self) -> Result<(), InitFailure> {
        // capset(2) checks each call against the current sets and the caps crate changes
        // one set per call: inheritable while permitted is still whole, then effective
        // (which must stay within permitted), then permitted shrinks last.
        for (set, name, value) in [
            (CapSet::Inheritable, "inheritable", &self.inheritable),
            (CapSet::Effective, "effective", &self.effective),
            (CapSet::Permitted, "permitted", &self.permitted),
        ] {
            caps::set(None, set, value).map_err(|e| {
                InitFailure::new(format!("set the {name} capabilities"), e.to_string())
            })?;
        }
        // Raising an ambient capability needs it in permitted and inheritable; the kernel
        // refuses otherwise, which is the error the user should see.
        for cap in &self.ambient {
            caps::raise(None, CapSet::Ambient, *cap).map_err(|e| {
                InitFailure::new(format!("raise ambient capability {cap}"), e.to_string())
            })?;
        }
        Ok(())
    }
}

/// The oci-spec enum serializes to the kernel name (`CAP_SYS_ADMIN`); the caps crate
/// parses that name.
fn to_caps_capability(cap: &oci_spec::runtime::Capability) -> Option<Capability> {
    let name = serde_json::to_value(cap).ok()?;
    Capability::from_str(name.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Capability as OciCap, LinuxCapabilitiesBuilder};

    #[test]
    fn converts_names() {
        assert_eq!(
            to_caps_capability(&OciCap::SysAdmin),
            Some(Capability::CAP_SYS_ADMIN)
        );
        assert_eq!(
            to_caps_capability(&OciCap::NetBindService),
            Some(Capability::CAP_NET_BIND_SERVICE)
        );
    }

    #[test]
    fn missing_capabilities_mean_none() {
        assert_eq!(CapabilitySets::from_spec(None), CapabilitySets::default());
    }

    #[test]
    fn sets_are_converted_separately() {
        let spec = LinuxCapabilitiesBuilder::default()
            .bounding(
                [OciCap::Chown, OciCap::Kill]
                    .into_iter()
                    .collect::<Capabilities>(),
            )
            .effective([OciCap::Kill].into_iter().collect::<Capabilities>())
            .permitted(Capabilities::new())
            .build()
            .unwrap();
        let sets = CapabilitySets::from_spec(Some(&spec));
        assert_eq!(sets.bounding.len(), 2);
        assert!(sets.effective.contains(&Capability::CAP_KILL));
        assert!(sets.permitted.is_empty());
    }
}
