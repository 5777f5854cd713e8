//! The guest's vCPU model, named as QEMU's `-cpu` names it (`EPYC-v4`, `EPYC-Milan`, ...).
//! Its CPUID signature is part of every VMSA, so it is part of the measurement.

use std::fmt;

use sev::measurement::vcpu_types::CpuType;

/// The QEMU vCPU models the measurement knows, as QEMU spells them.
pub const KNOWN_VCPU_TYPES: [&str; 18] = [
    "EPYC",
    "EPYC-v1",
    "EPYC-v2",
    "EPYC-IBPB",
    "EPYC-v3",
    "EPYC-v4",
    "EPYC-Rome",
    "EPYC-Rome-v1",
    "EPYC-Rome-v2",
    "EPYC-Rome-v3",
    "EPYC-Milan",
    "EPYC-Milan-v1",
    "EPYC-Milan-v2",
    "EPYC-Genoa",
    "EPYC-Genoa-v1",
    "EPYC-Turin",
    "EPYC-Turin-v1",
    "EPYC-Turin-v2",
];

/// A vCPU model name that the measurement does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown vCPU type `{name}`: use one of QEMU's AMD models {}", KNOWN_VCPU_TYPES.join(", "))]
pub struct ParseVcpuTypeError {
    /// The name given.
    pub name: String,
}

/// A QEMU AMD EPYC vCPU model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VcpuType(CpuType);

impl VcpuType {
    /// Parses a QEMU model name (case-insensitive, as QEMU accepts it).
    pub fn parse(name: &str) -> Result<Self, ParseVcpuTypeError> {
        CpuType::try_from(name)
            .map(VcpuType)
            .map_err(|_| ParseVcpuTypeError {
                name: name.to_owned(),
            })
    }

    /// The `sev` crate's value.
    pub fn cpu_type(self) -> CpuType {
        self.0
    }
}

impl fmt::Display for VcpuType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_parses_and_prints_as_qemu_spells_it() {
        for name in KNOWN_VCPU_TYPES {
            let parsed = VcpuType::parse(name).unwrap();
            assert_eq!(parsed.to_string(), name);
        }
        assert_eq!(
            VcpuType::parse("epyc-milan").unwrap().to_string(),
            "EPYC-Milan"
        );
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let error = VcpuType::parse("Skylake-Server").unwrap_err();
        assert!(error.to_string().contains("EPYC-Milan"), "{error}");
    }
}
