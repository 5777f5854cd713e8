//! The spec's `linux.seccomp` profile as a classic BPF filter for seccomp(2), as runc builds
//! one through libseccomp: the profile's rules, first match deciding, and its default
//! action for every other system call.
//!
//! Written here rather than through a crate: libseccomp is a C library (a C toolchain and
//! its headers on every build machine, and a static build for the guest), and
//! `seccompiler` gives one filter a single action for every rule, where a profile gives
//! each rule its own action and errno. What is written is small: a label-resolving emitter
//! of five instructions, checked against a direct evaluation of the profile by an
//! interpreter in the tests, and by the kernel in the runtime tests.
//!
//! Only the native architecture's system call numbers are known (the `syscalls` crate's
//! table for x86_64). A call made through another ABI (i386's `int 0x80`, x32) fails with
//! ENOSYS rather than being held to rules written for other numbers; a profile's names
//! the table does not know are skipped, as runc skips them.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// Set in the number of an x32 system call.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// `struct seccomp_data` offsets.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;

/// Classic BPF opcodes the filter uses.
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// `seccomp(2)` filter flags.
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;

/// A profile that cannot be enforced as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("linux.seccomp: {0}")]
pub struct SeccompError(String);

/// A compiled filter and the flags to install it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompFilter {
    /// The program.
    pub instructions: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*`.
    pub flags: u32,
}

/// One instruction whose jumps name labels, resolved when the program is finished.
#[derive(Debug, Clone, Copy)]
struct Pending {
    code: u16,
    k: u32,
    /// Label to jump to when true; `None` falls through.
    jt: Option<usize>,
    jf: Option<usize>,
}

/// Emits instructions with forward jumps to labels.
#[derive(Debug, Default)]
struct Emitter {
    pending: Vec<Pending>,
    labels: Vec<Option<usize>>,
}

impl Emitter {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.pending.len());
    }

    fn emit(&mut self, code: u16, k: u32) {
        self.jump(code, k, None, None);
    }

    fn jump(&mut self, code: u16, k: u32, jt: Option<usize>, jf: Option<usize>) {
        self.pending.push(Pending { code, k, jt, jf });
    }

    fn load(&mut self, offset: u32) {
        self.emit(LD_W_ABS, offset);
    }

    fn ret(&mut self, action: u32) {
        self.emit(RET_K, action);
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>, SeccompError> {
        let offset = |at: usize, label: Option<usize>| -> Result<u8, SeccompError> {
            let Some(label) = label else { return Ok(0) };
            let target = self.labels[label].expect("every label is bound");
            u8::try_from(target - at - 1).map_err(|_| {
                SeccompError(
                    "a system call has too many rules for one filter; split its conditions".into(),
                )
            })
        };
        self.pending
            .iter()
            .enumerate()
            .map(|(at, p)| {
                Ok(libc::sock_filter {
                    code: p.code,
                    jt: offset(at, p.jt)?,
                    jf: offset(at, p.jf)?,
                    k: p.k,
                })
            })
            .collect()
    }
}

/// One rule of the profile with its system call's number.
#[derive(Debug, Clone)]
struct Rule<'a> {
    number: u32,
    action: u32,
    args: &'a [LinuxSeccompArg],
}

/// Compiles `profile` for this machine's architecture.
pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompFilter, SeccompError> {
    if profile.listener_path().is_some() {
        return Err(SeccompError(
            "listenerPath (SCMP_ACT_NOTIFY) is not supported in the guest; remove it".into(),
        ));
    }
    let default = action_value(profile.default_action(), profile.default_errno_ret())?;
    let rules = rules_of(profile)?;
    let mut numbers: Vec<u32> = rules.iter().map(|r| r.number).collect();
    numbers.sort_unstable();
    numbers.dedup();

    let mut out = Emitter::default();
    // Jumps reach at most 255 instructions, so each "other ABI" return sits next to its test.
    let (native, not_x32) = (out.label(), out.label());
    out.load(ARCH_OFFSET);
    out.jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, Some(native), None);
    out.ret(RET_ERRNO | libc::ENOSYS as u32);
    out.bind(native);
    out.load(NR_OFFSET);
    out.jump(JMP_JGE_K, X32_SYSCALL_BIT, None, Some(not_x32));
    out.ret(RET_ERRNO | libc::ENOSYS as u32);
    out.bind(not_x32);
    for number in numbers {
        let next_call = out.label();
        out.jump(JMP_JEQ_K, number, None, Some(next_call));
        for rule in rules.iter().filter(|r| r.number == number) {
            let next_rule = out.label();
            for arg in rule.args {
                condition(&mut out, arg, next_rule)?;
            }
            out.ret(rule.action);
            out.bind(next_rule);
        }
        out.ret(default);
        out.bind(next_call);
    }
    out.ret(default);
    Ok(SeccompFilter {
        instructions: out.finish()?,
        flags: flags_of(profile)?,
    })
}

/// Every rule in the profile's order, one per name the table knows.
fn rules_of(profile: &LinuxSeccomp) -> Result<Vec<Rule<'_>>, SeccompError> {
    let mut rules = Vec::new();
    for syscall in profile.syscalls().iter().flatten() {
        let action = action_value(syscall.action(), syscall.errno_ret())?;
        let args = syscall.args().as_deref().unwrap_or_default();
        if let Some(arg) = args.iter().find(|a| a.index() > 5) {
            return Err(SeccompError(format!(
                "a rule for {:?} tests argument {}; system calls have arguments 0 to 5",
                syscall.names(),
                arg.index()
            )));
        }
        for name in syscall.names() {
            match name.parse::<syscalls::Sysno>() {
                Ok(sysno) => rules.push(Rule {
                    number: sysno.id() as u32,
                    action,
                    args,
                }),
                Err(_) => {
                    tracing::debug!(syscall = %name, "seccomp rule for a system call this architecture does not have, skipped")
                }
            }
        }
    }
    Ok(rules)
}

/// Emits one argument test; jumps to `fail` when it does not hold and falls through when it
/// does. 64-bit values are compared as their high then low 32-bit halves.
fn condition(out: &mut Emitter, arg: &LinuxSeccompArg, fail: usize) -> Result<(), SeccompError> {
    let low = ARGS_OFFSET + 8 * arg.index() as u32;
    let high = low + 4;
    let value = arg.value();
    let (v_high, v_low) = ((value >> 32) as u32, value as u32);
    let pass = out.label();
    match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => {
            out.load(high);
            out.jump(JMP_JEQ_K, v_high, None, Some(fail));
            out.load(low);
            out.jump(JMP_JEQ_K, v_low, None, Some(fail));
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            out.load(high);
            out.jump(JMP_JEQ_K, v_high, None, Some(pass));
            out.load(low);
            out.jump(JMP_JEQ_K, v_low, Some(fail), None);
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let expected = arg.value_two().unwrap_or(0);
            for (offset, mask, wanted) in [
                (high, v_high, (expected >> 32) as u32),
                (low, v_low, expected as u32),
            ] {
                out.load(offset);
                out.emit(ALU_AND_K, mask);
                out.jump(JMP_JEQ_K, wanted, None, Some(fail));
            }
        }
        LinuxSeccompOperator::ScmpCmpGt => {
            ordered(out, (high, low), value, true, JMP_JGT_K, (fail, pass))
        }
        LinuxSeccompOperator::ScmpCmpGe => {
            ordered(out, (high, low), value, true, JMP_JGE_K, (fail, pass))
        }
        // Less than is "not greater or equal"; less or equal is "not greater".
        LinuxSeccompOperator::ScmpCmpLt => {
            ordered(out, (high, low), value, false, JMP_JGE_K, (fail, pass))
        }
        LinuxSeccompOperator::ScmpCmpLe => {
            ordered(out, (high, low), value, false, JMP_JGT_K, (fail, pass))
        }
    }
    out.bind(pass);
    Ok(())
}

/// An ordered comparison of a 64-bit argument: the high halves decide unless equal, then
/// `low_test` on the low halves. `above` says whether the argument must be the greater
/// (GT, GE) or not (LT, LE, whose `low_test` is the one that fails them).
fn ordered(
    out: &mut Emitter,
    (high, low): (u32, u32),
    value: u64,
    above: bool,
    low_test: u16,
    (fail, pass): (usize, usize),
) {
    let (v_high, v_low) = ((value >> 32) as u32, value as u32);
    let (when_higher, when_lower) = if above { (pass, fail) } else { (fail, pass) };
    out.load(high);
    out.jump(JMP_JGT_K, v_high, Some(when_higher), None);
    out.jump(JMP_JEQ_K, v_high, None, Some(when_lower));
    out.load(low);
    if above {
        out.jump(low_test, v_low, None, Some(fail));
    } else {
        out.jump(low_test, v_low, Some(fail), None);
    }
}

/// What the filter returns for `action`; `errno` defaults to EPERM, as runc's does.
fn action_value(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    let data = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => return Err(SeccompError(
            "SCMP_ACT_NOTIFY needs a listener, which the guest does not run; use SCMP_ACT_ERRNO"
                .into(),
        )),
    })
}

fn flags_of(profile: &LinuxSeccomp) -> Result<u32, SeccompError> {
    profile
        .flags()
        .iter()
        .flatten()
        .map(|flag| match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => Ok(FLAG_TSYNC),
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => Ok(FLAG_LOG),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => Ok(FLAG_SPEC_ALLOW),
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => Err(SeccompError(
                "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV is for a notify listener, which the guest does not run; remove it".into(),
            )),
        })
        .try_fold(0, |all, flag| Ok(all | flag?))
}

/// Installs `filter` on the calling thread. Without no_new_privileges the caller needs
/// CAP_SYS_ADMIN.
pub(crate) fn install(filter: &SeccompFilter) -> Result<(), nix::errno::Errno> {
    let program = libc::sock_fprog {
        len: u16::try_from(filter.instructions.len()).map_err(|_| nix::errno::Errno::E2BIG)?,
        filter: filter.instructions.as_ptr().cast_mut(),
    };
    // SAFETY: program points at instructions that outlive the call; the kernel copies them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            filter.flags,
            &program as *const libc::sock_fprog,
        )
    };
    nix::errno::Errno::result(rc).map(|_| ())
}

#[cfg(test)]
mod tests;
