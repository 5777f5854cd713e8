//! Which device nodes a container's processes may create, read and write: the spec's
//! `linux.resources.devices` rules followed by runc's default allowances, enforced by cgroup
//! v2's device controller, which is a BPF program attached to the container's cgroup.
//!
//! Without it, any container with CAP_MKNOD (in containerd's default set) could make a node
//! for any device of the guest and open it, `/dev/sev-guest` included, and ask for
//! attestation reports of its own.
//!
//! The rules keep runc's meaning: the last rule that matches an access decides it, and an
//! access no rule matches is denied. [`DeviceRules::allows`] evaluates them directly (the
//! delivery guard asks it about attestation devices); [`DeviceRules::program`] compiles them
//! into the program the kernel runs, and the tests run that program in an interpreter
//! against the direct evaluation.

use std::fmt;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

/// What a process does with a device node; the bits are the kernel's `BPF_DEVCG_ACC_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u32);

impl Access {
    /// Creating a node (mknod).
    pub const MKNOD: Access = Access(1);
    /// Opening it for reading.
    pub const READ: Access = Access(2);
    /// Opening it for writing.
    pub const WRITE: Access = Access(4);
    /// All three, `rwm`.
    pub const ALL: Access = Access(7);

    /// Parses an OCI access string such as `rwm` or `r`; empty or absent means all three,
    /// as runc reads it.
    fn parse(access: Option<&str>) -> Result<Access, String> {
        let mut bits = 0;
        for letter in access.unwrap_or("").chars() {
            bits |= match letter {
                'r' => Self::READ.0,
                'w' => Self::WRITE.0,
                'm' => Self::MKNOD.0,
                other => {
                    return Err(format!(
                        "access {:?} has {other:?}; use only r (read), w (write) and m (mknod)",
                        access.unwrap_or("")
                    ))
                }
            };
        }
        Ok(if bits == 0 { Self::ALL } else { Access(bits) })
    }

    /// Each single access, in the order the program tests them.
    const EACH: [Access; 3] = [Access::MKNOD, Access::READ, Access::WRITE];

    /// Whether every bit of `wanted` is in `self`.
    fn covers(self, wanted: Access) -> bool {
        wanted.0 & !self.0 == 0
    }

    fn covers_any(self, wanted: Access) -> bool {
        wanted.0 & self.0 != 0
    }

    /// Both bits at once, e.g. an open for reading and writing.
    pub fn and(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }
}

/// Block or character; the values are the kernel's `BPF_DEVCG_DEV_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// A block device.
    Block = 1,
    /// A character device.
    Char = 2,
}

/// One rule: a class (or all), a major and a minor (or any), the accesses it covers, and
/// whether it allows or denies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allows (`true`) or denies.
    pub allow: bool,
    /// Its class; `None` is both (`a`).
    pub class: Option<DeviceClass>,
    /// Its major number; `None` is any.
    pub major: Option<u32>,
    /// Its minor number; `None` is any.
    pub minor: Option<u32>,
    /// The accesses it covers.
    pub access: Access,
}

impl DeviceRule {
    const fn allow_char(major: u32, minor: Option<u32>) -> DeviceRule {
        DeviceRule {
            allow: true,
            class: Some(DeviceClass::Char),
            major: Some(major),
            minor,
            access: Access::ALL,
        }
    }

    fn matches(&self, class: DeviceClass, major: u32, minor: u32) -> bool {
        self.class.is_none_or(|c| c == class)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }

    /// Matches every device: for the accesses it covers, rules before it never decide.
    fn matches_every_device(&self) -> bool {
        self.class.is_none() && self.major.is_none() && self.minor.is_none()
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            None => 'a',
            Some(DeviceClass::Block) => 'b',
            Some(DeviceClass::Char) => 'c',
        };
        let number = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, letter) in [
            (Access::READ, 'r'),
            (Access::WRITE, 'w'),
            (Access::MKNOD, 'm'),
        ] {
            if self.access.covers(bit) {
                access.push(letter);
            }
        }
        let verdict = if self.allow { "allow" } else { "deny" };
        write!(
            f,
            "{verdict} {class} {}:{} {access}",
            number(self.major),
            number(self.minor)
        )
    }
}

/// runc's default allowances, appended after the spec's rules: mknod of any node (opening
/// it is what the rules decide), the devices every container's /dev has, and terminals.
/// runc's old tun/tap allowance is left out: a pod that needs it says so in its spec.
const DEFAULT_RULES: [DeviceRule; 10] = [
    DeviceRule {
        allow: true,
        class: Some(DeviceClass::Char),
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule {
        allow: true,
        class: Some(DeviceClass::Block),
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule::allow_char(1, Some(3)), // null
    DeviceRule::allow_char(1, Some(5)), // zero
    DeviceRule::allow_char(1, Some(7)), // full
    DeviceRule::allow_char(1, Some(8)), // random
    DeviceRule::allow_char(1, Some(9)), // urandom
    DeviceRule::allow_char(5, Some(0)), // tty
    DeviceRule::allow_char(5, Some(2)), // ptmx
    DeviceRule::allow_char(136, None),  // pts
];

/// A rule of the spec that cannot be enforced as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("linux.resources.devices[{index}]: {detail}")]
pub struct DeviceRuleError {
    /// Its position in the spec's list.
    pub index: usize,
    /// What is wrong and what to write instead.
    pub detail: String,
}

/// The rules a container's cgroup enforces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRules(Vec<DeviceRule>);

impl DeviceRules {
    /// The spec's rules (none when `resources` or its `devices` is absent) followed by the
    /// defaults.
    pub fn of(resources: Option<&LinuxResources>) -> Result<DeviceRules, DeviceRuleError> {
        let given = resources
            .and_then(|r| r.devices().as_deref())
            .unwrap_or_default();
        let mut rules = given
            .iter()
            .enumerate()
            .map(|(index, rule)| rule_of(rule).map_err(|detail| DeviceRuleError { index, detail }))
            .collect::<Result<Vec<_>, _>>()?;
        rules.extend(DEFAULT_RULES);
        Ok(DeviceRules(rules))
    }

    /// The rules in order.
    pub fn rules(&self) -> &[DeviceRule] {
        &self.0
    }

    /// Whether a process may do `access` to device `major:minor` of `class`: each of its
    /// accesses (an open for reading and writing is two) is decided by the last rule that
    /// matches the device and covers it, and denied when none does. This is what runc's
    /// rule emulator makes of a list, so a rule denying only `r` also denies `rw`.
    pub fn allows(&self, class: DeviceClass, major: u32, minor: u32, access: Access) -> bool {
        Access::EACH
            .iter()
            .filter(|bit| access.covers_any(**bit))
            .all(|&bit| {
                self.0
                    .iter()
                    .rev()
                    .find(|rule| rule.access.covers(bit) && rule.matches(class, major, minor))
                    .is_some_and(|rule| rule.allow)
            })
    }

    /// The rules as a `BPF_PROG_TYPE_CGROUP_DEVICE` program (eBPF instructions, eight bytes
    /// each), deciding as [`DeviceRules::allows`] does: one section per access bit the
    /// request has, each testing the rules that cover the bit from the last to the first.
    pub fn program(&self) -> Vec<u8> {
        let mut source = String::from(PROGRAM_PROLOGUE);
        for bit in Access::EACH {
            source.push_str(&self.access_section(bit));
        }
        source.push_str("mov32 r0, 1\nexit\n");
        rbpf::assembler::assemble(&source)
            .unwrap_or_else(|error| panic!("device program does not assemble ({error}):\n{source}"))
    }

    /// Decides one access bit: skipped when the request lacks it, on to the next section
    /// when a rule allows it, a return of 0 (deny) when a rule denies it or none matches.
    /// Rules before one that matches every device are left out: they can never decide.
    fn access_section(&self, bit: Access) -> String {
        let mut lines = vec![
            "mov32 r1, r3".to_string(),
            format!("and32 r1, {}", bit.0),
            "jeq r1, 0, +{end}".to_string(),
        ];
        for rule in self.0.iter().rev().filter(|rule| rule.access.covers(bit)) {
            lines.extend(rule_block(rule));
            if rule.matches_every_device() {
                // The kernel's verifier refuses instructions no path reaches.
                return resolve_jumps(&lines, "{end}");
            }
        }
        lines.extend(["mov32 r0, 0".to_string(), "exit".to_string()]);
        resolve_jumps(&lines, "{end}")
    }
}

/// Loads the context (`struct bpf_cgroup_dev_ctx`: access_type, major, minor) into
/// registers: r2 the class, r3 the access, r4 the major, r5 the minor.
const PROGRAM_PROLOGUE: &str = "\
ldxw r2, [r1+0]
and32 r2, 0xffff
ldxw r3, [r1+0]
rsh32 r3, 16
ldxw r4, [r1+4]
ldxw r5, [r1+8]
";

/// One rule's test: each condition that fails jumps past the rest of the block, to the
/// next rule; a rule whose conditions all hold denies (returns 0) or allows (jumps to the
/// end of its section, `{end}`).
fn rule_block(rule: &DeviceRule) -> Vec<String> {
    let mut block = Vec::new();
    if let Some(class) = rule.class {
        block.push(format!("jne r2, {}, +{{skip}}", class as u32));
    }
    if let Some(major) = rule.major {
        block.push(format!("jne r4, {major}, +{{skip}}"));
    }
    if let Some(minor) = rule.minor {
        block.push(format!("jne r5, {minor}, +{{skip}}"));
    }
    if rule.allow {
        block.push("ja +{end}".to_string());
    } else {
        block.extend(["mov32 r0, 0".to_string(), "exit".to_string()]);
    }
    resolve_jumps(&block, "{skip}")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Replaces `label` in each line with the distance to the end of `lines`, so that the jump
/// lands on the first instruction after them.
fn resolve_jumps(lines: &[String], label: &str) -> String {
    let length = lines.len();
    lines
        .iter()
        .enumerate()
        .map(|(at, line)| line.replace(label, &(length - at - 1).to_string()) + "\n")
        .collect()
}

fn rule_of(rule: &LinuxDeviceCgroup) -> Result<DeviceRule, String> {
    let class =
        match rule.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some(DeviceClass::Char),
            Some(LinuxDeviceType::B) => Some(DeviceClass::Block),
            Some(LinuxDeviceType::P) => return Err(
                "type p (a fifo) is not a device class the device controller knows; use a, b or c"
                    .to_string(),
            ),
        };
    Ok(DeviceRule {
        allow: rule.allow(),
        class,
        major: device_number("major", rule.major())?,
        minor: device_number("minor", rule.minor())?,
        access: Access::parse(rule.access().as_deref())?,
    })
}

/// An absent number, or -1 as some tools write it, is any.
fn device_number(which: &str, number: Option<i64>) -> Result<Option<u32>, String> {
    match number {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
            format!(
                "{which} {n} is not a device number; give one from 0 to {} or leave it out for any",
                u32::MAX
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(&format!(r#"{{"devices":{json}}}"#)).expect("resources")
    }

    fn rules(json: &str) -> DeviceRules {
        DeviceRules::of(Some(&resources(json))).expect("rules")
    }

    /// Runs the compiled program as the kernel would for one access.
    fn run(program: &[u8], class: DeviceClass, major: u32, minor: u32, access: Access) -> bool {
        let mut context = Vec::with_capacity(12);
        context.extend_from_slice(&((access.0 << 16) | class as u32).to_le_bytes());
        context.extend_from_slice(&major.to_le_bytes());
        context.extend_from_slice(&minor.to_le_bytes());
        let vm = rbpf::EbpfVmRaw::new(Some(program)).expect("program passes rbpf's checks");
        match vm.execute_program(&mut context).expect("program runs") {
            0 => false,
            1 => true,
            other => panic!("the program returned {other}"),
        }
    }

    const ACCESSES: [Access; 4] = [Access::READ, Access::WRITE, Access::MKNOD, Access(6)];

    #[test]
    fn containerds_default_spec_allows_the_default_devices_and_nothing_else() {
        let rules = rules(r#"[{"allow":false,"access":"rwm"}]"#);
        let rw = Access::READ.and(Access::WRITE);
        assert!(rules.allows(DeviceClass::Char, 1, 3, rw), "/dev/null");
        assert!(rules.allows(DeviceClass::Char, 136, 4, rw), "a pts");
        assert!(
            rules.allows(DeviceClass::Char, 10, 124, Access::MKNOD),
            "mknod is allowed"
        );
        assert!(
            !rules.allows(DeviceClass::Char, 10, 124, Access::READ),
            "opening it is not"
        );
        assert!(!rules.allows(DeviceClass::Block, 253, 0, Access::READ));
        assert!(
            !rules.allows(DeviceClass::Char, 1, 1, Access::READ),
            "/dev/mem"
        );
    }

    #[test]
    fn a_rule_allowing_everything_allows_everything() {
        let rules = rules(r#"[{"allow":true,"access":"rwm"}]"#);
        assert!(rules.allows(DeviceClass::Block, 253, 0, Access::READ.and(Access::WRITE)));
    }

    #[test]
    fn the_last_matching_rule_decides() {
        let rules = rules(
            r#"[{"allow":true,"type":"c","major":10,"access":"rw"},
                {"allow":false,"type":"c","major":10,"minor":124,"access":"r"}]"#,
        );
        assert!(rules.allows(DeviceClass::Char, 10, 200, Access::READ));
        assert!(!rules.allows(DeviceClass::Char, 10, 124, Access::READ));
        assert!(rules.allows(DeviceClass::Char, 10, 124, Access::WRITE));
        assert!(
            !rules.allows(DeviceClass::Char, 10, 124, Access::READ.and(Access::WRITE)),
            "denying r denies rw"
        );
        let program = rules.program();
        for access in ACCESSES {
            assert_eq!(
                run(&program, DeviceClass::Char, 10, 124, access),
                rules.allows(DeviceClass::Char, 10, 124, access),
                "{access:?}"
            );
        }
    }

    #[test]
    fn rules_that_cannot_be_enforced_are_refused_with_their_index() {
        for (json, wanted) in [
            (r#"[{"allow":true,"access":"rwx"}]"#, "use only r (read)"),
            (r#"[{"allow":true,"type":"p"}]"#, "type p"),
            (
                r#"[{"allow":true,"major":-7}]"#,
                "major -7 is not a device number",
            ),
        ] {
            let mut list: Vec<serde_json::Value> = vec![serde_json::json!({"allow": false})];
            list.extend(serde_json::from_str::<Vec<serde_json::Value>>(json).unwrap());
            let error = DeviceRules::of(Some(&resources(&serde_json::to_string(&list).unwrap())))
                .expect_err(json);
            assert_eq!(error.index, 1, "{error}");
            assert!(error.to_string().contains(wanted), "{error}");
            assert!(
                error
                    .to_string()
                    .starts_with("linux.resources.devices[1]: "),
                "{error}"
            );
        }
    }

    #[test]
    fn absent_resources_get_the_defaults_only() {
        assert_eq!(DeviceRules::of(None).unwrap().rules(), &DEFAULT_RULES);
        assert_eq!(
            DeviceRule::allow_char(136, None).to_string(),
            "allow c 136:* rwm"
        );
    }

    #[test]
    fn the_program_decides_as_the_rules_do_for_containerds_default() {
        let rules = rules(r#"[{"allow":false,"access":"rwm"}]"#);
        let program = rules.program();
        for (class, major, minor) in [
            (DeviceClass::Char, 1, 3),
            (DeviceClass::Char, 1, 1),
            (DeviceClass::Char, 136, 9),
            (DeviceClass::Char, 10, 124),
            (DeviceClass::Block, 1, 3),
            (DeviceClass::Block, 253, 0),
        ] {
            for access in ACCESSES {
                assert_eq!(
                    run(&program, class, major, minor, access),
                    rules.allows(class, major, minor, access),
                    "{class:?} {major}:{minor} {access:?}"
                );
            }
        }
    }

    #[test]
    fn rules_before_a_catch_all_are_not_compiled() {
        let catch_all = rules(r#"[{"allow":true,"access":"rwm"}]"#).program();
        let denial_before_it = rules(
            r#"[{"allow":false,"type":"c","major":1,"minor":1},{"allow":true,"access":"rwm"}]"#,
        )
        .program();
        assert_eq!(denial_before_it, catch_all);
    }

    fn any_rule() -> impl Strategy<Value = DeviceRule> {
        (
            any::<bool>(),
            prop_oneof![
                Just(None),
                Just(Some(DeviceClass::Char)),
                Just(Some(DeviceClass::Block))
            ],
            prop::option::of(0u32..4),
            prop::option::of(0u32..4),
            1u32..8,
        )
            .prop_map(|(allow, class, major, minor, access)| DeviceRule {
                allow,
                class,
                major,
                minor,
                access: Access(access),
            })
    }

    proptest! {
        #[test]
        fn the_program_decides_as_the_rules_do(spec in prop::collection::vec(any_rule(), 0..8)) {
            let mut all = spec;
            all.extend(DEFAULT_RULES);
            let rules = DeviceRules(all);
            let program = rules.program();
            if nix::unistd::geteuid().is_root() {
                let loaded = super::super::bpf::load_device_program(&program);
                prop_assert!(loaded.is_ok(), "the kernel refuses it: {}", loaded.unwrap_err());
            }
            for class in [DeviceClass::Char, DeviceClass::Block] {
                for major in [0, 1, 3, 5, 136] {
                    for minor in [0, 2, 3, 9] {
                        for access in 1..8 {
                            let access = Access(access);
                            prop_assert_eq!(
                                run(&program, class, major, minor, access),
                                rules.allows(class, major, minor, access),
                                "{:?} {}:{} {:?} under {:?}", class, major, minor, access, rules
                            );
                        }
                    }
                }
            }
        }
    }
}
