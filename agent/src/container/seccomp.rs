//! Compiles an OCI `linux.seccomp` profile into a classic BPF program and
//! installs it, without libseccomp.
//!
//! Role: the agent calls [`apply`] (or [`compile`] before forking and
//! [`install`] after) in the container's process right before `execve`, after
//! setting `no_new_privs` if the process asks for it.
//!
//! Trust: the profile comes from the host's config.json, which the runtime
//! has already parsed and size-limited; every field is still validated here,
//! and a bad one is reported with its place in config.json
//! (`linux.seccomp.syscalls[3] (personality) args[0]: ...`).
//!
//! Semantics (libseccomp and runc as far as a linear filter allows):
//! - The guest kernel is x86_64 without IA32 emulation, so only
//!   `AUDIT_ARCH_X86_64` runs the rules; any other `seccomp_data.arch` gets
//!   the default action, whatever `architectures` lists (libseccomp, too,
//!   always covers the native architecture). x32 system calls (numbers with
//!   `__X32_SYSCALL_BIT`) always get the default action, even when
//!   `SCMP_ARCH_X32` is listed: the guest kernel is built without x32.
//! - Rules are tried in profile order and the first match wins. A rule matches
//!   when the number is one of its names and every argument condition holds.
//!   Conditions compare the full 64-bit argument, as two 32-bit words.
//!   Several conditions on one argument must all hold too (runc instead
//!   splits them into one rule each, so that any of them matches).
//! - `SCMP_CMP_MASKED_EQ` is `(arg & value) == valueTwo`: like libseccomp,
//!   which takes the mask first, and as docker's `clone` rule expects.
//! - A rule whose action equals the default action is skipped, as runc does
//!   (libseccomp refuses such rules): it must not shadow a later rule.
//! - Names the x86_64 table does not know are skipped, as runc does.
//! - `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` carry `errnoRet`, EPERM if unset.
//! - Not done: runc's `-ENOSYS` for system calls newer than the profile.
//!
//! Program shape: a prologue checks the architecture and the x32 bit, then
//! each rule becomes blocks of at most 255 `JEQ nr` tests leading to the
//! rule's body (its conditions and `RET action`); a failed condition reloads
//! `nr` and falls into the next block, so no jump spans more than one block
//! and every offset fits the 8-bit `jt`/`jf`. The docker and podman default
//! profiles take about 360 and 430 of the kernel's 4096 instructions.
//!
//! Constants: `SECCOMP_RET_*`, `SECCOMP_FILTER_FLAG_*`, `struct seccomp_data`
//! from linux/seccomp.h, `BPF_*` and `BPF_MAXINSNS` from linux/filter.h (all
//! through `libc`); `AUDIT_ARCH_X86_64` from linux/audit.h and
//! `__X32_SYSCALL_BIT` from arch/x86/include/uapi/asm/unistd.h; system call
//! numbers from the `syscalls` crate's x86_64 table.

use std::io;
use std::mem::offset_of;
use std::str::FromStr;

use husk_protocol::oci::{Seccomp, SyscallArg, SyscallRule};
use libc::{c_ulong, sock_filter};
use syscalls::x86_64::Sysno;

/// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`: set in the number of every x32 system call.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets into `struct seccomp_data`, the packet the filter reads.
const NR_OFFSET: u32 = offset_of!(libc::seccomp_data, nr) as u32;
const ARCH_OFFSET: u32 = offset_of!(libc::seccomp_data, arch) as u32;
const ARGS_OFFSET: u32 = offset_of!(libc::seccomp_data, args) as u32;

/// The classic BPF opcodes the filter uses.
const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The kernel's limit on the length of a filter.
const MAX_INSTRUCTIONS: usize = libc::BPF_MAXINSNS as usize;
/// Names tested in one block: the first `JEQ` jumps over the others to the
/// body, and a jump offset is 8 bits.
const MAX_NAMES_PER_BLOCK: usize = 255;
/// Argument conditions in one rule: a condition takes up to six
/// instructions, and the last name test jumps over the whole body. Real
/// profiles use at most two.
const MAX_CONDITIONS: usize = 32;

/// Errors compiling or installing a filter; messages name the rule or field
/// that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An action name that is not one of `SCMP_ACT_*`.
    #[error("{field}: unknown action `{action}`")]
    UnknownAction { field: String, action: String },
    /// `SCMP_ACT_NOTIFY`, which needs a seccomp agent the guest does not run.
    #[error("{field}: action `SCMP_ACT_NOTIFY` is not supported (no seccomp agent in the guest)")]
    NotifyUnsupported { field: String },
    /// An `errnoRet` that does not fit the 16-bit `SECCOMP_RET_DATA`.
    #[error("{field}: errnoRet {errno} does not fit in the 16 bits of SECCOMP_RET_DATA")]
    ErrnoOutOfRange { field: String, errno: u32 },
    /// A comparison operator that is not one of `SCMP_CMP_*`.
    #[error("{field}: unknown operator `{op}`")]
    UnknownOperator { field: String, op: String },
    /// An argument index past the sixth argument.
    #[error("{field}: argument index {index} is out of range (0 to 5)")]
    ArgIndexOutOfRange { field: String, index: u32 },
    /// More conditions than one rule's block can hold.
    #[error("{field}: {count} argument conditions, at most {max} fit in one rule")]
    TooManyConditions {
        field: String,
        count: usize,
        max: usize,
    },
    /// An architecture name that is not one of `SCMP_ARCH_*`.
    #[error("linux.seccomp.architectures: unknown architecture `{0}`")]
    UnknownArchitecture(String),
    /// A flag name that is not one of the supported `SECCOMP_FILTER_FLAG_*`.
    #[error("linux.seccomp.flags: unknown or unsupported flag `{0}`")]
    UnknownFlag(String),
    /// A program longer than the kernel accepts.
    #[error(
        "linux.seccomp: the filter needs {len} BPF instructions, the kernel accepts at most {max}"
    )]
    TooLong { len: usize, max: usize },
    /// A jump the compiler laid out wrongly; a bug here, not in the profile.
    #[error("seccomp compiler: the jump at instruction {at} cannot be encoded ({reason})")]
    BadJump { at: usize, reason: &'static str },
    /// `seccomp()` failed with `EACCES`.
    #[error(
        "installing the seccomp filter: the kernel refuses it because the process \
         lacks CAP_SYS_ADMIN and no_new_privs is not set"
    )]
    NoNewPrivsRequired,
    /// `SECCOMP_FILTER_FLAG_TSYNC` could not move another thread to the filter.
    #[error("installing the seccomp filter: thread {tid} could not be synchronized (TSYNC)")]
    TsyncFailed { tid: i64 },
    /// Any other `seccomp()` failure (`EINVAL` for a flag this kernel lacks...).
    #[error("installing the seccomp filter with flags {flags:#x}")]
    Install {
        flags: c_ulong,
        #[source]
        source: io::Error,
    },
}

/// Compiles `profile` into a BPF program for `SECCOMP_SET_MODE_FILTER`.
///
/// Validates every field first, so a bad rule is an error even if it would
/// be skipped. Allocates: in a child forked from a multi-threaded parent,
/// call it before forking and [`install`] the result in the child.
pub fn compile(profile: &Seccomp) -> Result<Vec<sock_filter>, SeccompError> {
    let default = Action::parse(
        &profile.default_action,
        profile.default_errno_ret,
        "linux.seccomp.defaultAction",
    )?;
    check_architectures(&profile.architectures)?;
    let rules = profile
        .syscalls
        .iter()
        .enumerate()
        .map(|(i, rule)| Rule::parse(i, rule))
        .collect::<Result<Vec<_>, _>>()?;

    let mut asm = Assembler::default();
    emit_prologue(&mut asm, default);
    for rule in rules.iter().filter(|rule| rule.action != default) {
        for numbers in rule.numbers.chunks(MAX_NAMES_PER_BLOCK) {
            emit_block(&mut asm, numbers, rule);
        }
    }
    asm.ret(default);

    let program = asm.finish()?;
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong {
            len: program.len(),
            max: MAX_INSTRUCTIONS,
        });
    }
    Ok(program)
}

/// The `SECCOMP_FILTER_FLAG_*` bits `profile.flags` names.
///
/// Supported: `SECCOMP_FILTER_FLAG_TSYNC`, `SECCOMP_FILTER_FLAG_LOG`,
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`; any other name is an error.
pub fn filter_flags(profile: &Seccomp) -> Result<c_ulong, SeccompError> {
    profile.flags.iter().try_fold(0, |flags, name| {
        let bit = match name.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => libc::SECCOMP_FILTER_FLAG_TSYNC,
            "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            _ => return Err(SeccompError::UnknownFlag(name.clone())),
        };
        Ok(flags | bit)
    })
}

/// Installs `program` on the calling thread with
/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, ...)`.
///
/// Neither allocates nor takes locks, so it is safe in a freshly forked
/// child. The kernel refuses the filter unless the process has
/// `CAP_SYS_ADMIN` or has set `no_new_privs`: that is
/// [`SeccompError::NoNewPrivsRequired`].
pub fn install(program: &[sock_filter], flags: c_ulong) -> Result<(), SeccompError> {
    let too_long = || SeccompError::TooLong {
        len: program.len(),
        max: MAX_INSTRUCTIONS,
    };
    if program.len() > MAX_INSTRUCTIONS {
        return Err(too_long());
    }
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| too_long())?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program.len()` valid instructions that
    // outlive the call; the kernel only reads them (it copies the filter).
    // The other arguments are plain integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            c_ulong::from(libc::SECCOMP_SET_MODE_FILTER),
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    match rc {
        0 => Ok(()),
        tid if tid > 0 => Err(SeccompError::TsyncFailed { tid }),
        _ => {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EACCES) {
                Err(SeccompError::NoNewPrivsRequired)
            } else {
                Err(SeccompError::Install { flags, source })
            }
        }
    }
}

/// Compiles `profile`, then installs it with the flags `profile.flags` names.
///
/// Allocates while compiling; see [`compile`] and [`install`] to split the
/// two around a `fork`.
pub fn apply(profile: &Seccomp) -> Result<(), SeccompError> {
    let program = compile(profile)?;
    let flags = filter_flags(profile)?;
    install(&program, flags)
}

/// What the filter returns for a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    /// Parses an `SCMP_ACT_*` name; `errno_ret` is the data of `ERRNO` and
    /// `TRACE` (EPERM if unset, as runc does).
    fn parse(name: &str, errno_ret: Option<u32>, field: &str) -> Result<Self, SeccompError> {
        let data = || {
            let errno = errno_ret.unwrap_or(libc::EPERM as u32);
            u16::try_from(errno).map_err(|_| SeccompError::ErrnoOutOfRange {
                field: field.to_owned(),
                errno,
            })
        };
        Ok(match name {
            "SCMP_ACT_ALLOW" => Self::Allow,
            "SCMP_ACT_ERRNO" => Self::Errno(data()?),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Self::KillThread,
            "SCMP_ACT_KILL_PROCESS" => Self::KillProcess,
            "SCMP_ACT_TRAP" => Self::Trap,
            "SCMP_ACT_TRACE" => Self::Trace(data()?),
            "SCMP_ACT_LOG" => Self::Log,
            "SCMP_ACT_NOTIFY" => {
                return Err(SeccompError::NotifyUnsupported {
                    field: field.to_owned(),
                })
            }
            _ => {
                return Err(SeccompError::UnknownAction {
                    field: field.to_owned(),
                    action: name.to_owned(),
                })
            }
        })
    }

    /// The `SECCOMP_RET_*` value a `RET` instruction returns.
    fn ret_value(self) -> u32 {
        match self {
            Self::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
            Self::KillThread => libc::SECCOMP_RET_KILL_THREAD,
            Self::Trap => libc::SECCOMP_RET_TRAP,
            Self::Errno(errno) => libc::SECCOMP_RET_ERRNO | u32::from(errno),
            Self::Trace(data) => libc::SECCOMP_RET_TRACE | u32::from(data),
            Self::Log => libc::SECCOMP_RET_LOG,
            Self::Allow => libc::SECCOMP_RET_ALLOW,
        }
    }
}

/// An `SCMP_CMP_*` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

impl CmpOp {
    fn parse(op: &str) -> Option<Self> {
        Some(match op {
            "SCMP_CMP_EQ" => Self::Eq,
            "SCMP_CMP_NE" => Self::Ne,
            "SCMP_CMP_LT" => Self::Lt,
            "SCMP_CMP_LE" => Self::Le,
            "SCMP_CMP_GT" => Self::Gt,
            "SCMP_CMP_GE" => Self::Ge,
            "SCMP_CMP_MASKED_EQ" => Self::MaskedEq,
            _ => return None,
        })
    }
}

/// One validated argument condition.
#[derive(Debug, Clone, Copy)]
struct Condition {
    index: u32,
    op: CmpOp,
    value: u64,
    value_two: u64,
}

impl Condition {
    fn parse(arg: &SyscallArg, field: &str) -> Result<Self, SeccompError> {
        let op = CmpOp::parse(&arg.op).ok_or_else(|| SeccompError::UnknownOperator {
            field: field.to_owned(),
            op: arg.op.clone(),
        })?;
        if arg.index > 5 {
            return Err(SeccompError::ArgIndexOutOfRange {
                field: field.to_owned(),
                index: arg.index,
            });
        }
        Ok(Self {
            index: arg.index,
            op,
            value: arg.value,
            value_two: arg.value_two,
        })
    }
}

/// One validated rule: the x86_64 numbers of its names, its action and
/// conditions.
#[derive(Debug)]
struct Rule {
    numbers: Vec<u32>,
    action: Action,
    conditions: Vec<Condition>,
}

impl Rule {
    /// Validates `linux.seccomp.syscalls[index]`.
    fn parse(index: usize, rule: &SyscallRule) -> Result<Self, SeccompError> {
        let field = match rule.names.first() {
            Some(name) => format!("linux.seccomp.syscalls[{index}] ({name})"),
            None => format!("linux.seccomp.syscalls[{index}]"),
        };
        let action = Action::parse(&rule.action, rule.errno_ret, &field)?;
        if rule.args.len() > MAX_CONDITIONS {
            return Err(SeccompError::TooManyConditions {
                field,
                count: rule.args.len(),
                max: MAX_CONDITIONS,
            });
        }
        let conditions = rule
            .args
            .iter()
            .enumerate()
            .map(|(i, arg)| Condition::parse(arg, &format!("{field} args[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let numbers = rule
            .names
            .iter()
            .filter_map(|name| Sysno::from_str(name).ok())
            .map(|sysno| sysno.id() as u32)
            .collect();
        Ok(Self {
            numbers,
            action,
            conditions,
        })
    }
}

/// The `SCMP_ARCH_*` names libseccomp knows.
const ARCHITECTURES: &[&str] = &[
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

/// Rejects unknown names; the known ones change nothing (see the module doc).
fn check_architectures(architectures: &[String]) -> Result<(), SeccompError> {
    match architectures
        .iter()
        .find(|arch| !ARCHITECTURES.contains(&arch.as_str()))
    {
        Some(arch) => Err(SeccompError::UnknownArchitecture(arch.clone())),
        None => Ok(()),
    }
}

/// Leaves `nr` in the accumulator, or returns `default` for a foreign
/// architecture or an x32 call.
fn emit_prologue(asm: &mut Assembler, default: Action) {
    let native = asm.label();
    asm.load(ARCH_OFFSET);
    asm.jump(JEQ_K, AUDIT_ARCH_X86_64, Target::To(native), Target::Next);
    asm.ret(default);
    asm.bind(native);

    let x86_64 = asm.label();
    asm.load(NR_OFFSET);
    asm.jump(JGE_K, X32_SYSCALL_BIT, Target::Next, Target::To(x86_64));
    asm.ret(default);
    asm.bind(x86_64);
}

/// One block: `JEQ` each of `numbers` to the body, else on to the next
/// block. Expects `nr` in the accumulator and leaves it there on the way out.
fn emit_block(asm: &mut Assembler, numbers: &[u32], rule: &Rule) {
    let body = asm.label();
    let end = asm.label();
    for (i, &nr) in numbers.iter().enumerate() {
        let miss = if i + 1 == numbers.len() {
            Target::To(end)
        } else {
            Target::Next
        };
        asm.jump(JEQ_K, nr, Target::To(body), miss);
    }
    asm.bind(body);
    if rule.conditions.is_empty() {
        asm.ret(rule.action);
    } else {
        let fail = asm.label();
        for condition in &rule.conditions {
            emit_condition(asm, condition, fail);
        }
        asm.ret(rule.action);
        asm.bind(fail);
        asm.load(NR_OFFSET);
    }
    asm.bind(end);
}

/// Falls through when `condition` holds, jumps to `fail` otherwise. The
/// argument is little-endian: its low word first, its high word 4 bytes on.
fn emit_condition(asm: &mut Assembler, condition: &Condition, fail: Label) {
    let low = ARGS_OFFSET + 8 * condition.index;
    let high = low + 4;
    let (value_high, value_low) = split(condition.value);
    let fail = Target::To(fail);
    let next = Target::Next;
    match condition.op {
        CmpOp::Eq => {
            asm.load(high);
            asm.jump(JEQ_K, value_high, next, fail);
            asm.load(low);
            asm.jump(JEQ_K, value_low, next, fail);
        }
        CmpOp::Ne => {
            let pass = asm.label();
            asm.load(high);
            asm.jump(JEQ_K, value_high, next, Target::To(pass));
            asm.load(low);
            asm.jump(JEQ_K, value_low, fail, next);
            asm.bind(pass);
        }
        CmpOp::MaskedEq => {
            // `value` is the mask, `valueTwo` the expected result.
            let (datum_high, datum_low) = split(condition.value_two);
            asm.load(high);
            asm.and(value_high);
            asm.jump(JEQ_K, datum_high, next, fail);
            asm.load(low);
            asm.and(value_low);
            asm.jump(JEQ_K, datum_low, next, fail);
        }
        CmpOp::Gt | CmpOp::Ge => {
            // Passes on a greater high word; an equal one defers to the low.
            let pass = asm.label();
            asm.load(high);
            asm.jump(JGT_K, value_high, Target::To(pass), next);
            asm.jump(JEQ_K, value_high, next, fail);
            asm.load(low);
            let low_test = if condition.op == CmpOp::Gt {
                JGT_K
            } else {
                JGE_K
            };
            asm.jump(low_test, value_low, next, fail);
            asm.bind(pass);
        }
        CmpOp::Lt | CmpOp::Le => {
            // Passes on a smaller high word; an equal one defers to the low.
            let pass = asm.label();
            asm.load(high);
            asm.jump(JGE_K, value_high, next, Target::To(pass));
            asm.jump(JEQ_K, value_high, next, fail);
            asm.load(low);
            let low_fails = if condition.op == CmpOp::Lt {
                JGE_K
            } else {
                JGT_K
            };
            asm.jump(low_fails, value_low, fail, next);
            asm.bind(pass);
        }
    }
}

/// `(high word, low word)` of a 64-bit value.
fn split(value: u64) -> (u32, u32) {
    ((value >> 32) as u32, value as u32)
}

/// A position in the program, bound once the code before it is emitted.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

/// Where a conditional jump goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The next instruction (offset 0).
    Next,
    /// A label later in the program.
    To(Label),
}

#[derive(Debug)]
enum Insn {
    Stmt {
        code: u16,
        k: u32,
    },
    Jump {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
}

/// Emits instructions with symbolic forward jumps, resolved by `finish`.
#[derive(Debug, Default)]
struct Assembler {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
}

impl Assembler {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.insns.len());
    }

    fn load(&mut self, offset: u32) {
        self.insns.push(Insn::Stmt {
            code: LD_ABS,
            k: offset,
        });
    }

    fn and(&mut self, mask: u32) {
        self.insns.push(Insn::Stmt {
            code: AND_K,
            k: mask,
        });
    }

    fn ret(&mut self, action: Action) {
        self.insns.push(Insn::Stmt {
            code: RET_K,
            k: action.ret_value(),
        });
    }

    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.insns.push(Insn::Jump { code, k, jt, jf });
    }

    /// The offset from the instruction at `at` to `target`.
    fn offset(&self, at: usize, target: Target) -> Result<u8, SeccompError> {
        let label = match target {
            Target::Next => return Ok(0),
            Target::To(label) => label,
        };
        let bad = |reason| SeccompError::BadJump { at, reason };
        let dest = self.labels[label.0].ok_or_else(|| bad("unbound label"))?;
        let offset = dest
            .checked_sub(at + 1)
            .ok_or_else(|| bad("backward jump"))?;
        u8::try_from(offset).map_err(|_| bad("more than 255 instructions ahead"))
    }

    fn finish(self) -> Result<Vec<sock_filter>, SeccompError> {
        self.insns
            .iter()
            .enumerate()
            .map(|(at, insn)| {
                Ok(match *insn {
                    Insn::Stmt { code, k } => sock_filter {
                        code,
                        jt: 0,
                        jf: 0,
                        k,
                    },
                    Insn::Jump { code, k, jt, jf } => sock_filter {
                        code,
                        jt: self.offset(at, jt)?,
                        jf: self.offset(at, jf)?,
                        k,
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_DEFAULT: &str = include_str!("testdata/docker-default.json");
    const PODMAN_DEFAULT: &str = include_str!("testdata/podman-default.json");
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    fn errno(errno: u32) -> u32 {
        libc::SECCOMP_RET_ERRNO | errno
    }

    fn nr(name: &str) -> u32 {
        Sysno::from_str(name).expect("an x86_64 system call").id() as u32
    }

    /// A `seccomp_data` for the BPF interpreter.
    struct Call {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Call {
        fn new(name: &str, args: &[u64]) -> Self {
            let mut all = [0; 6];
            all[..args.len()].copy_from_slice(args);
            Self {
                nr: nr(name),
                arch: AUDIT_ARCH_X86_64,
                args: all,
            }
        }

        fn bytes(&self) -> [u8; 64] {
            let mut bytes = [0; 64];
            bytes[0..4].copy_from_slice(&self.nr.to_le_bytes());
            bytes[4..8].copy_from_slice(&self.arch.to_le_bytes());
            for (i, arg) in self.args.iter().enumerate() {
                bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
            }
            bytes
        }
    }

    /// Runs `program` on `call` the way the kernel would, checking as it
    /// goes what the kernel's verifier checks.
    fn run(program: &[sock_filter], call: &Call) -> u32 {
        let data = call.bytes();
        let mut acc: u32 = 0;
        let mut pc = 0;
        loop {
            let insn = program.get(pc).expect("the program ran past its end");
            pc += 1;
            let k = insn.k;
            let taken = match insn.code {
                LD_ABS => {
                    let at = k as usize;
                    assert!((at & 3) == 0 && at + 4 <= data.len(), "bad load at {k}");
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                    continue;
                }
                AND_K => {
                    acc &= k;
                    continue;
                }
                RET_K => return k,
                JEQ_K => acc == k,
                JGT_K => acc > k,
                JGE_K => acc >= k,
                code => panic!("unexpected opcode {code:#x} at {}", pc - 1),
            };
            pc += usize::from(if taken { insn.jt } else { insn.jf });
        }
    }

    /// Docker's default capability set (moby `oci/caps/defaults.go`).
    const DOCKER_CAPS: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    /// Podman's default capability set (containers.conf `default_capabilities`).
    const PODMAN_CAPS: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    ];

    /// What `program` returns for the x86_64 call `name(args...)`.
    fn decide(program: &[sock_filter], name: &str, args: &[u64]) -> u32 {
        run(program, &Call::new(name, args))
    }

    /// Turns a docker-format profile (docker's and podman's defaults) into
    /// the OCI form as the engine does for an x86_64 container with `caps`:
    /// a rule is kept when its `includes` arches and caps are met and its
    /// `excludes` are not; `minKernel` is taken as met.
    fn from_docker_format(json: &str, caps: &[&str]) -> Seccomp {
        let profile: serde_json::Value = serde_json::from_str(json).unwrap();
        let strings = |v: &serde_json::Value| -> Vec<String> {
            let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
            items
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        let on_x86_64 = |arches: &[String]| arches.iter().any(|a| a == "amd64" || a == "x86_64");
        let has = |cap: &String| caps.contains(&cap.as_str());
        let kept = |rule: &serde_json::Value| {
            let (includes, excludes) = (&rule["includes"], &rule["excludes"]);
            let arches = strings(&includes["arches"]);
            (arches.is_empty() || on_x86_64(&arches))
                && strings(&includes["caps"]).iter().all(has)
                && !on_x86_64(&strings(&excludes["arches"]))
                && !strings(&excludes["caps"]).iter().any(has)
        };
        let to_oci = |rule: &serde_json::Value| {
            let mut rule = rule.as_object().unwrap().clone();
            rule.retain(|_, value| !value.is_null());
            serde_json::from_value(rule.into()).unwrap()
        };
        Seccomp {
            default_action: profile["defaultAction"].as_str().unwrap().to_owned(),
            default_errno_ret: profile["defaultErrnoRet"].as_u64().map(|e| e as u32),
            architectures: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
                .map(String::from)
                .to_vec(),
            flags: Vec::new(),
            syscalls: profile["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|rule| kept(rule))
                .map(to_oci)
                .collect(),
        }
    }

    fn rule(names: &[&str], action: &str, errno_ret: Option<u32>) -> SyscallRule {
        SyscallRule {
            names: names.iter().map(|n| n.to_string()).collect(),
            action: action.to_owned(),
            errno_ret,
            args: Vec::new(),
        }
    }

    fn arg(index: u32, op: &str, value: u64, value_two: u64) -> SyscallArg {
        SyscallArg {
            index,
            value,
            value_two,
            op: op.to_owned(),
        }
    }

    fn profile(default_action: &str, syscalls: Vec<SyscallRule>) -> Seccomp {
        Seccomp {
            default_action: default_action.to_owned(),
            syscalls,
            ..Seccomp::default()
        }
    }

    /// `getpid` with `condition` returns ERRNO(7), anything else is allowed.
    fn single_condition(condition: SyscallArg) -> Vec<sock_filter> {
        let mut getpid = rule(&["getpid"], "SCMP_ACT_ERRNO", Some(7));
        getpid.args.push(condition);
        compile(&profile("SCMP_ACT_ALLOW", vec![getpid])).unwrap()
    }

    #[test]
    fn docker_default_profile_fits_and_decides_like_docker() {
        let profile = from_docker_format(DOCKER_DEFAULT, DOCKER_CAPS);

        let program = compile(&profile).unwrap();

        println!("docker default profile: {} instructions", program.len());
        assert!(program.len() <= MAX_INSTRUCTIONS);
        let eperm = errno(1);
        assert_eq!(decide(&program, "read", &[0, 0, 16]), ALLOW);
        assert_eq!(decide(&program, "writev", &[]), ALLOW);
        assert_eq!(decide(&program, "arch_prctl", &[]), ALLOW);
        assert_eq!(decide(&program, "kexec_load", &[]), eperm);
        assert_eq!(decide(&program, "personality", &[0]), ALLOW);
        assert_eq!(decide(&program, "personality", &[0xffff_ffff]), ALLOW);
        assert_eq!(decide(&program, "personality", &[0x1234]), eperm);
        assert_eq!(decide(&program, "personality", &[0x1_ffff_ffff]), eperm);
        assert_eq!(decide(&program, "socket", &[2, 1, 0]), ALLOW);
        assert_eq!(decide(&program, "socket", &[40, 1, 0]), eperm);
        assert_eq!(decide(&program, "clone3", &[]), errno(38));
    }

    #[test]
    fn docker_clone_rule_masks_out_namespace_flags() {
        let program = compile(&from_docker_format(DOCKER_DEFAULT, DOCKER_CAPS)).unwrap();
        let fork_flags = (libc::CLONE_VM | libc::CLONE_FS | libc::SIGCHLD) as u64;

        let plain = decide(&program, "clone", &[fork_flags]);
        let new_ns = decide(&program, "clone", &[fork_flags | libc::CLONE_NEWNS as u64]);
        let new_user = decide(&program, "clone", &[libc::CLONE_NEWUSER as u64]);

        assert_eq!(plain, ALLOW);
        assert_eq!(new_ns, errno(1));
        assert_eq!(new_user, errno(1));
    }

    #[test]
    fn docker_default_profile_gives_foreign_and_x32_calls_the_default_action() {
        let program = compile(&from_docker_format(DOCKER_DEFAULT, DOCKER_CAPS)).unwrap();
        let mut i386_read = Call::new("read", &[]);
        i386_read.arch = AUDIT_ARCH_I386;
        let mut x32_read = Call::new("read", &[]);
        x32_read.nr |= X32_SYSCALL_BIT;

        assert_eq!(run(&program, &i386_read), errno(1));
        assert_eq!(run(&program, &x32_read), errno(1));
    }

    #[test]
    fn podman_default_profile_fits_and_decides_like_podman() {
        let profile = from_docker_format(PODMAN_DEFAULT, PODMAN_CAPS);

        let program = compile(&profile).unwrap();

        println!("podman default profile: {} instructions", program.len());
        assert!(program.len() <= MAX_INSTRUCTIONS);
        let (eperm, enosys) = (errno(1), errno(38));
        assert_eq!(decide(&program, "read", &[]), ALLOW);
        assert_eq!(decide(&program, "kexec_load", &[]), eperm);
        assert_eq!(decide(&program, "add_key", &[]), enosys);
        assert_eq!(decide(&program, "personality", &[8]), ALLOW);
        assert_eq!(decide(&program, "personality", &[0x1234]), enosys);
        // socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT) is refused with EINVAL.
        assert_eq!(decide(&program, "socket", &[16, 3, 9]), errno(22));
        assert_eq!(decide(&program, "socket", &[16, 3, 0]), ALLOW);
        let mut i386_read = Call::new("read", &[]);
        i386_read.arch = AUDIT_ARCH_I386;
        assert_eq!(run(&program, &i386_read), enosys);
    }

    /// Values around the word boundaries, where a 32-bit compare goes wrong.
    const EDGES: [u64; 9] = [
        0,
        1,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0001,
        0x1_ffff_ffff,
        0x2_0000_0000,
        0x8000_0000_0000_0000,
        u64::MAX,
    ];

    /// What a comparison means, on `(argument, value)`.
    type Meaning = fn(u64, u64) -> bool;

    #[test]
    fn every_comparison_matches_unsigned_64_bit_arithmetic() {
        let ops: [(&str, Meaning); 6] = [
            ("SCMP_CMP_EQ", |a, v| a == v),
            ("SCMP_CMP_NE", |a, v| a != v),
            ("SCMP_CMP_LT", |a, v| a < v),
            ("SCMP_CMP_LE", |a, v| a <= v),
            ("SCMP_CMP_GT", |a, v| a > v),
            ("SCMP_CMP_GE", |a, v| a >= v),
        ];
        for (op, holds) in ops {
            for value in EDGES {
                let program = single_condition(arg(2, op, value, 0));
                for a in EDGES {
                    let expected = if holds(a, value) { errno(7) } else { ALLOW };

                    let got = decide(&program, "getpid", &[0, 0, a]);

                    assert_eq!(got, expected, "{a:#x} {op} {value:#x}");
                }
            }
        }
    }

    #[test]
    fn masked_eq_compares_the_argument_masked_by_value_with_value_two() {
        for mask in EDGES {
            for datum in [0, 1, 0x1_0000_0000, mask] {
                let program = single_condition(arg(5, "SCMP_CMP_MASKED_EQ", mask, datum));
                for a in EDGES {
                    let expected = if a & mask == datum { errno(7) } else { ALLOW };

                    let got = decide(&program, "getpid", &[0, 0, 0, 0, 0, a]);

                    assert_eq!(got, expected, "{a:#x} & {mask:#x} == {datum:#x}");
                }
            }
        }
    }

    #[test]
    fn gt_and_lt_decide_on_the_high_word_when_high_words_differ() {
        let gt = single_condition(arg(0, "SCMP_CMP_GT", 0x1_0000_0000, 0));
        let lt = single_condition(arg(0, "SCMP_CMP_LT", 0x1_0000_0000, 0));

        // The low word of 0x2_0000_0000 is smaller, of 0xffff_ffff larger.
        let gt_high_bigger = decide(&gt, "getpid", &[0x2_0000_0000]);
        let gt_high_smaller = decide(&gt, "getpid", &[0xffff_ffff]);
        let lt_high_bigger = decide(&lt, "getpid", &[0x2_0000_0000]);
        let lt_high_smaller = decide(&lt, "getpid", &[0xffff_ffff]);

        assert_eq!(gt_high_bigger, errno(7));
        assert_eq!(gt_high_smaller, ALLOW);
        assert_eq!(lt_high_bigger, ALLOW);
        assert_eq!(lt_high_smaller, errno(7));
    }

    #[test]
    fn all_conditions_of_a_rule_must_hold() {
        let mut getpid = rule(&["getpid"], "SCMP_ACT_ERRNO", Some(7));
        getpid.args = vec![arg(0, "SCMP_CMP_EQ", 1, 0), arg(1, "SCMP_CMP_EQ", 2, 0)];
        let program = compile(&profile("SCMP_ACT_ALLOW", vec![getpid])).unwrap();

        let both = decide(&program, "getpid", &[1, 2]);
        let first_only = decide(&program, "getpid", &[1, 3]);

        assert_eq!(both, errno(7));
        assert_eq!(first_only, ALLOW);
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule(&["getpid"], "SCMP_ACT_ERRNO", Some(5)),
            rule(&["getpid", "getppid"], "SCMP_ACT_ALLOW", None),
        ];

        let program = compile(&profile("SCMP_ACT_KILL_PROCESS", rules)).unwrap();

        assert_eq!(decide(&program, "getpid", &[]), errno(5));
        assert_eq!(decide(&program, "getppid", &[]), ALLOW);
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        assert_eq!(decide(&program, "gettid", &[]), kill);
    }

    #[test]
    fn rule_with_the_default_action_does_not_shadow_later_rules() {
        let mut p = profile(
            "SCMP_ACT_ERRNO",
            vec![
                rule(&["getpid"], "SCMP_ACT_ERRNO", Some(1)),
                rule(&["getpid"], "SCMP_ACT_ALLOW", None),
            ],
        );
        p.default_errno_ret = Some(1);

        let program = compile(&p).unwrap();

        assert_eq!(decide(&program, "getpid", &[]), ALLOW);
    }

    #[test]
    fn unknown_syscall_names_are_skipped() {
        let rules = vec![rule(
            &["no_such_call", "_llseek", "getpid"],
            "SCMP_ACT_ALLOW",
            None,
        )];

        let program = compile(&profile("SCMP_ACT_ERRNO", rules)).unwrap();

        assert_eq!(decide(&program, "getpid", &[]), ALLOW);
        assert_eq!(decide(&program, "gettid", &[]), errno(1));
    }

    #[test]
    fn rules_with_more_names_than_one_block_holds_still_match_every_name() {
        let names: Vec<&str> = Sysno::iter().map(|s| s.name()).collect();
        assert!(names.len() > MAX_NAMES_PER_BLOCK);
        let mut with_condition = rule(&names, "SCMP_ACT_ERRNO", Some(9));
        with_condition.args.push(arg(0, "SCMP_CMP_EQ", 9, 0));
        let rules = vec![with_condition, rule(&names, "SCMP_ACT_ALLOW", None)];

        let program = compile(&profile("SCMP_ACT_KILL", rules)).unwrap();

        for name in names {
            assert_eq!(decide(&program, name, &[9]), errno(9), "{name}");
            assert_eq!(decide(&program, name, &[0]), ALLOW, "{name}");
        }
    }

    #[test]
    fn default_errno_ret_sets_the_default_action_data() {
        let mut p = profile("SCMP_ACT_ERRNO", Vec::new());
        p.default_errno_ret = Some(38);

        let program = compile(&p).unwrap();

        assert_eq!(decide(&program, "getpid", &[]), errno(38));
    }

    #[test]
    fn actions_map_to_their_seccomp_ret_values() {
        let cases = [
            ("SCMP_ACT_KILL", None, libc::SECCOMP_RET_KILL_THREAD),
            ("SCMP_ACT_KILL_THREAD", None, libc::SECCOMP_RET_KILL_THREAD),
            (
                "SCMP_ACT_KILL_PROCESS",
                None,
                libc::SECCOMP_RET_KILL_PROCESS,
            ),
            ("SCMP_ACT_TRAP", None, libc::SECCOMP_RET_TRAP),
            ("SCMP_ACT_ERRNO", None, errno(1)),
            ("SCMP_ACT_TRACE", Some(3), libc::SECCOMP_RET_TRACE | 3),
            ("SCMP_ACT_LOG", None, libc::SECCOMP_RET_LOG),
        ];
        for (action, errno_ret, expected) in cases {
            let rules = vec![rule(&["getpid"], action, errno_ret)];

            let program = compile(&profile("SCMP_ACT_ALLOW", rules)).unwrap();

            assert_eq!(decide(&program, "getpid", &[]), expected, "{action}");
        }
    }

    #[test]
    fn unknown_action_is_an_error_naming_the_rule() {
        let rules = vec![
            rule(&["getpid"], "SCMP_ACT_ALLOW", None),
            rule(&["read"], "ALLOW", None),
        ];

        let err = compile(&profile("SCMP_ACT_ERRNO", rules)).unwrap_err();

        assert!(matches!(err, SeccompError::UnknownAction { .. }));
        assert_eq!(
            err.to_string(),
            "linux.seccomp.syscalls[1] (read): unknown action `ALLOW`"
        );
    }

    #[test]
    fn unknown_default_action_is_an_error() {
        let err = compile(&profile("SCMP_ACT_DENY", Vec::new())).unwrap_err();

        assert_eq!(
            err.to_string(),
            "linux.seccomp.defaultAction: unknown action `SCMP_ACT_DENY`"
        );
    }

    #[test]
    fn unknown_operator_is_an_error_naming_the_rule_and_op() {
        let mut personality = rule(&["personality", "read"], "SCMP_ACT_ALLOW", None);
        personality.args.push(arg(0, "SCMP_CMP_ALMOST", 0, 0));

        let err = compile(&profile("SCMP_ACT_ERRNO", vec![personality])).unwrap_err();

        assert_eq!(
            err.to_string(),
            "linux.seccomp.syscalls[0] (personality) args[0]: unknown operator `SCMP_CMP_ALMOST`"
        );
    }

    #[test]
    fn argument_index_six_is_an_error() {
        let mut getpid = rule(&["getpid"], "SCMP_ACT_ALLOW", None);
        getpid.args.push(arg(6, "SCMP_CMP_EQ", 0, 0));

        let err = compile(&profile("SCMP_ACT_ERRNO", vec![getpid])).unwrap_err();

        assert!(matches!(
            err,
            SeccompError::ArgIndexOutOfRange { index: 6, .. }
        ));
        assert!(
            err.to_string().contains("syscalls[0] (getpid) args[0]"),
            "{err}"
        );
    }

    #[test]
    fn notify_is_not_supported() {
        let rules = vec![rule(&["mkdir"], "SCMP_ACT_NOTIFY", None)];

        let err = compile(&profile("SCMP_ACT_ALLOW", rules)).unwrap_err();

        assert!(matches!(err, SeccompError::NotifyUnsupported { .. }));
        assert!(err.to_string().contains("(mkdir)"), "{err}");
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    #[test]
    fn errno_ret_beyond_16_bits_is_an_error() {
        let rules = vec![rule(&["getpid"], "SCMP_ACT_ERRNO", Some(70_000))];

        let err = compile(&profile("SCMP_ACT_ALLOW", rules)).unwrap_err();

        assert!(matches!(
            err,
            SeccompError::ErrnoOutOfRange { errno: 70_000, .. }
        ));
    }

    #[test]
    fn too_many_conditions_are_an_error() {
        let mut getpid = rule(&["getpid"], "SCMP_ACT_ALLOW", None);
        getpid.args = vec![arg(0, "SCMP_CMP_NE", 0, 0); MAX_CONDITIONS + 1];

        let err = compile(&profile("SCMP_ACT_ERRNO", vec![getpid])).unwrap_err();

        assert!(matches!(err, SeccompError::TooManyConditions { .. }));
    }

    #[test]
    fn most_conditions_one_rule_holds_still_encode() {
        let mut getpid = rule(&["getpid"], "SCMP_ACT_ERRNO", Some(7));
        getpid.args = vec![arg(0, "SCMP_CMP_MASKED_EQ", 0, 0); MAX_CONDITIONS];

        let program = compile(&profile("SCMP_ACT_ALLOW", vec![getpid])).unwrap();

        assert_eq!(decide(&program, "getpid", &[]), errno(7));
    }

    #[test]
    fn unknown_architecture_is_an_error() {
        let mut p = profile("SCMP_ACT_ALLOW", Vec::new());
        p.architectures = vec!["SCMP_ARCH_X86_64".into(), "SCMP_ARCH_VAX".into()];

        let err = compile(&p).unwrap_err();

        assert_eq!(
            err.to_string(),
            "linux.seccomp.architectures: unknown architecture `SCMP_ARCH_VAX`"
        );
    }

    #[test]
    fn flags_map_to_seccomp_filter_flag_bits() {
        let mut p = profile("SCMP_ACT_ALLOW", Vec::new());
        p.flags = vec![
            "SECCOMP_FILTER_FLAG_TSYNC".into(),
            "SECCOMP_FILTER_FLAG_LOG".into(),
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW".into(),
        ];

        let flags = filter_flags(&p).unwrap();

        assert_eq!(flags, 0b111);
    }

    #[test]
    fn unknown_flag_is_an_error() {
        let mut p = profile("SCMP_ACT_ALLOW", Vec::new());
        p.flags = vec!["SECCOMP_FILTER_FLAG_NEW_LISTENER".into()];

        let err = filter_flags(&p).unwrap_err();

        assert!(matches!(err, SeccompError::UnknownFlag(ref f) if f.ends_with("NEW_LISTENER")));
    }

    /// Runs `body` in a forked child and returns its exit code.
    fn in_child(body: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child runs only `body` and then `_exit`s, never
        // returning into the test harness; `body` makes system calls and
        // at most allocates, which glibc keeps usable in a forked child.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            // SAFETY: ends the child without running the parent's exit
            // handlers or destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child and `status` a valid out pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid, "waitpid: {}", io::Error::last_os_error());
        assert!(
            libc::WIFEXITED(status),
            "child ended by signal, status {status:#x}"
        );
        libc::WEXITSTATUS(status)
    }

    /// Sets no_new_privs in the child; 2 if that fails.
    fn set_no_new_privs() -> Result<(), i32> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments.
        match unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } {
            0 => Ok(()),
            _ => Err(2),
        }
    }

    #[test]
    fn applied_filter_makes_getppid_fail_with_the_rule_errno() {
        let getppid = rule(&["getppid"], "SCMP_ACT_ERRNO", Some(42));
        let p = profile("SCMP_ACT_ALLOW", vec![getppid]);

        let code = in_child(|| {
            if let Err(code) = set_no_new_privs() {
                return code;
            }
            if apply(&p).is_err() {
                return 3;
            }
            // SAFETY: getppid takes no arguments.
            let rc = unsafe { libc::syscall(libc::SYS_getppid) };
            let err = io::Error::last_os_error().raw_os_error();
            if rc == -1 && err == Some(42) {
                0
            } else {
                1
            }
        });

        assert_eq!(
            code, 0,
            "1: getppid not refused, 2: prctl failed, 3: apply failed"
        );
    }

    #[test]
    fn kernel_compares_the_full_64_bit_argument_like_the_interpreter() {
        let mut getppid = rule(&["getppid"], "SCMP_ACT_ERRNO", Some(42));
        getppid.args.push(arg(0, "SCMP_CMP_GT", 0x1_0000_0000, 0));
        let p = profile("SCMP_ACT_ALLOW", vec![getppid]);
        let program = compile(&p).unwrap();

        let code = in_child(|| {
            if let Err(code) = set_no_new_privs() {
                return code;
            }
            if install(&program, 0).is_err() {
                return 3;
            }
            // SAFETY: getppid ignores its arguments; seccomp still sees them.
            let (high, low) = unsafe {
                (
                    libc::syscall(libc::SYS_getppid, 0x2_0000_0000_u64),
                    libc::syscall(libc::SYS_getppid, 0xffff_ffff_u64),
                )
            };
            if high == -1 && low > 0 {
                0
            } else {
                1
            }
        });

        assert_eq!(
            code, 0,
            "1: wrong decision, 2: prctl failed, 3: install failed"
        );
    }

    #[test]
    fn kernel_accepts_the_docker_default_program() {
        let p = from_docker_format(DOCKER_DEFAULT, DOCKER_CAPS);
        let program = compile(&p).unwrap();
        let flags = filter_flags(&p).unwrap();

        let code = in_child(|| {
            if let Err(code) = set_no_new_privs() {
                return code;
            }
            match install(&program, flags) {
                Ok(()) => 0,
                Err(_) => 3,
            }
        });

        assert_eq!(
            code, 0,
            "2: prctl failed, 3: the kernel refused the program"
        );
    }
}
