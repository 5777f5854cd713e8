//! One line of the doctor's report: what was checked, the verdict, and why.

use serde::Serialize;

/// The verdict on one capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Not present on this host.
    Missing,
    /// Present but cannot be used (the detail says why).
    Unusable,
}

impl Status {
    /// The lowercase name used in the table and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Unusable => "unusable",
        }
    }
}

/// One capability and what the doctor found about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier of the check (`kvm`, `sev-snp`, `qemu`, ...).
    pub check: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found; for anything not ok, why and what a person can do about it.
    pub detail: String,
}

impl Finding {
    /// A capability that is present and usable.
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Ok,
            detail: detail.into(),
        }
    }

    /// A capability this host lacks.
    pub fn missing(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Missing,
            detail: detail.into(),
        }
    }

    /// A capability that is present but cannot be used.
    pub fn unusable(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Unusable,
            detail: detail.into(),
        }
    }

    /// True when the verdict is [`Status::Ok`].
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}
