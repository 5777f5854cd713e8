use super::*;
use proptest::prelude::*;

/// Runs the classic BPF `filter` as the kernel would for one system call.
fn run(filter: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, arg) in args.iter().enumerate() {
        let at = 16 + 8 * i;
        data[at..at + 8].copy_from_slice(&arg.to_le_bytes());
    }
    let word = |offset: u32| {
        let at = offset as usize;
        u32::from_le_bytes(data[at..at + 4].try_into().expect("in seccomp_data"))
    };
    let (mut pc, mut a) = (0usize, 0u32);
    loop {
        let insn = filter[pc];
        let jump = |taken: bool| pc + 1 + usize::from(if taken { insn.jt } else { insn.jf });
        pc = match insn.code {
            LD_W_ABS => {
                a = word(insn.k);
                pc + 1
            }
            ALU_AND_K => {
                a &= insn.k;
                pc + 1
            }
            JMP_JEQ_K => jump(a == insn.k),
            JMP_JGT_K => jump(a > insn.k),
            JMP_JGE_K => jump(a >= insn.k),
            RET_K => return insn.k,
            other => panic!("opcode {other:#x} the filter should not use"),
        };
    }
}

/// What the profile says for one call, evaluated directly.
fn decide(profile: &LinuxSeccomp, nr: u32, args: [u64; 6]) -> u32 {
    let rules = rules_of(profile).expect("rules");
    rules
        .iter()
        .filter(|r| r.number == nr)
        .find(|r| r.args.iter().all(|arg| holds(arg, args[arg.index()])))
        .map_or_else(
            || action_value(profile.default_action(), profile.default_errno_ret()).unwrap(),
            |r| r.action,
        )
}

fn holds(arg: &LinuxSeccompArg, value: u64) -> bool {
    match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => value == arg.value(),
        LinuxSeccompOperator::ScmpCmpNe => value != arg.value(),
        LinuxSeccompOperator::ScmpCmpLt => value < arg.value(),
        LinuxSeccompOperator::ScmpCmpLe => value <= arg.value(),
        LinuxSeccompOperator::ScmpCmpGt => value > arg.value(),
        LinuxSeccompOperator::ScmpCmpGe => value >= arg.value(),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            value & arg.value() == arg.value_two().unwrap_or(0)
        }
    }
}

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).expect("profile")
}

fn nr(name: &str) -> u32 {
    name.parse::<syscalls::Sysno>().expect("known").id() as u32
}

#[test]
fn a_denied_call_gets_its_errno_and_others_the_default() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
            {"names":["no_such_call"],"action":"SCMP_ACT_KILL"}]}"#,
    );
    let filter = compile(&p).expect("compiles");
    let f = &filter.instructions;
    assert_eq!(
        run(f, AUDIT_ARCH_X86_64, nr("mkdirat"), [0; 6]),
        RET_ERRNO | 13
    );
    assert_eq!(run(f, AUDIT_ARCH_X86_64, nr("read"), [0; 6]), RET_ALLOW);
    assert_eq!(filter.flags, 0);
}

#[test]
fn other_abis_get_enosys() {
    let filter = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#)).unwrap();
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    assert_eq!(
        run(&filter.instructions, AUDIT_ARCH_I386, 1, [0; 6]),
        enosys
    );
    assert_eq!(
        run(
            &filter.instructions,
            AUDIT_ARCH_X86_64,
            X32_SYSCALL_BIT | 1,
            [0; 6]
        ),
        enosys
    );
}

#[test]
fn arguments_are_compared_as_64_bit_values() {
    // As containerd's default profile allows personality(2) only for some values.
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
            {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
    );
    let f = compile(&p).unwrap().instructions;
    let personality = nr("personality");
    assert_eq!(run(&f, AUDIT_ARCH_X86_64, personality, [0; 6]), RET_ALLOW);
    assert_eq!(
        run(
            &f,
            AUDIT_ARCH_X86_64,
            personality,
            [0xffff_ffff, 0, 0, 0, 0, 0]
        ),
        RET_ALLOW
    );
    assert_eq!(
        run(
            &f,
            AUDIT_ARCH_X86_64,
            personality,
            [0x1_ffff_ffff, 0, 0, 0, 0, 0]
        ),
        RET_ERRNO | libc::EPERM as u32,
        "the high half counts"
    );
    let clone_newuser = libc::CLONE_NEWUSER as u64;
    assert_eq!(
        run(
            &f,
            AUDIT_ARCH_X86_64,
            nr("clone"),
            [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]
        ),
        RET_ALLOW
    );
    assert_eq!(
        run(
            &f,
            AUDIT_ARCH_X86_64,
            nr("clone"),
            [clone_newuser, 0, 0, 0, 0, 0]
        ),
        RET_ERRNO | libc::EPERM as u32
    );
}

#[test]
fn what_the_guest_cannot_do_is_refused_by_name() {
    for (json, wanted) in [
        (r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#, "SCMP_ACT_NOTIFY"),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#,
            "listenerPath",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
            "argument 6",
        ),
    ] {
        let error = compile(&profile(json)).expect_err(json).to_string();
        assert!(
            error.starts_with("linux.seccomp: ") && error.contains(wanted),
            "{error}"
        );
    }
}

#[test]
fn flags_are_passed_on() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
    );
    assert_eq!(compile(&p).unwrap().flags, FLAG_LOG | FLAG_SPEC_ALLOW);
}

const NAMES: [&str; 4] = ["read", "write", "mkdir", "personality"];
const OPS: [&str; 7] = [
    "SCMP_CMP_EQ",
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_GT",
    "SCMP_CMP_GE",
    "SCMP_CMP_MASKED_EQ",
];
const ACTIONS: [&str; 4] = [
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_LOG",
];
/// Values around the 32-bit halves' edges.
const VALUES: [u64; 6] = [0, 1, 0xffff_ffff, 0x1_0000_0000, 0x1_0000_0001, u64::MAX];

fn any_arg() -> impl Strategy<Value = serde_json::Value> {
    (0usize..2, 0..OPS.len(), 0..VALUES.len(), 0..VALUES.len()).prop_map(|(index, op, value, two)| {
        serde_json::json!({"index": index, "op": OPS[op], "value": VALUES[value], "valueTwo": VALUES[two]})
    })
}

fn any_rule() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::subsequence(NAMES.to_vec(), 1..3),
        0..ACTIONS.len(),
        1u32..40,
        prop::collection::vec(any_arg(), 0..3),
    )
        .prop_map(|(names, action, errno, args)| {
            serde_json::json!({"names": names, "action": ACTIONS[action], "errnoRet": errno, "args": args})
        })
}

proptest! {
    #[test]
    fn the_filter_decides_as_the_profile_does(
        rules in prop::collection::vec(any_rule(), 0..6),
        default in 0..ACTIONS.len(),
    ) {
        let p: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": ACTIONS[default], "defaultErrnoRet": 38, "syscalls": rules,
        })).expect("profile");
        let filter = compile(&p).expect("compiles").instructions;
        for name in NAMES {
            for first in VALUES {
                for second in VALUES {
                    let args = [first, second, 0, 0, 0, 0];
                    prop_assert_eq!(
                        run(&filter, AUDIT_ARCH_X86_64, nr(name), args),
                        decide(&p, nr(name), args),
                        "{} {:?}", name, args
                    );
                }
            }
        }
    }
}

/// The profile containerd 1.6 (Debian 12) writes for `seccompProfile: RuntimeDefault` and a
/// container with its default capabilities, recorded from a CRI pod's bundle.
const CONTAINERD_RUNTIME_DEFAULT: &str = include_str!("containerd-1.6-runtime-default.json");

#[test]
fn containerds_runtime_default_profile_compiles_and_decides_as_written() {
    let p = profile(CONTAINERD_RUNTIME_DEFAULT);
    let filter = compile(&p).expect("containerd's default profile compiles");
    let f = &filter.instructions;
    assert!(
        f.len() < 4096,
        "{} instructions; the kernel takes at most 4096",
        f.len()
    );
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let call = |name: &str, first: u64| run(f, AUDIT_ARCH_X86_64, nr(name), [first, 0, 0, 0, 0, 0]);
    assert_eq!(call("read", 0), RET_ALLOW);
    assert_eq!(
        call("close_range", 3),
        RET_ALLOW,
        "the init's last steps need it"
    );
    assert_eq!(call("personality", 0xffff_ffff), RET_ALLOW);
    assert_eq!(call("personality", 0x0040_0000), eperm);
    assert_eq!(
        call("unshare", libc::CLONE_NEWUSER as u64),
        eperm,
        "only with CAP_SYS_ADMIN"
    );
    assert_eq!(call("clone", libc::SIGCHLD as u64), RET_ALLOW);
    assert_eq!(call("clone", libc::CLONE_NEWUSER as u64), eperm);
    assert_eq!(call("mount", 0), eperm);
    for name in ["read", "personality", "clone", "unshare", "mount", "execve"] {
        for first in VALUES {
            let args = [first, 0, 0, 0, 0, 0];
            assert_eq!(
                run(f, AUDIT_ARCH_X86_64, nr(name), args),
                decide(&p, nr(name), args),
                "{name} {args:?}"
            );
        }
    }
}
