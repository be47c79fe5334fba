//! CPU kernels for the fast inference path, and the one switch that chooses between them and
//! candle's own ops.
//!
//! Activations are NHWC f32 slices; weights are repacked once, at load, for the kernel that
//! reads them. The kernels are:
//!
//! - [`gemm`]: a packed GEMM (BLIS-style blocking) whose left operand is packed on the fly by a
//!   [`gemm::PackA`] source, so a convolution reads its input through an implicit im2col
//!   ([`conv`]) and never materialises a full im2col buffer; bias, ReLU/ReLU6 and a residual
//!   add are fused into the store of each output tile;
//! - [`conv`]: dense convolution (any kernel, stride, padding) through that GEMM;
//! - [`winograd`]: 3x3 stride-1 convolution as Winograd F(4x4, 3x3) (or F(2x2, 3x3)), 4x (2.25x)
//!   fewer multiplies;
//! - [`depthwise`]: depthwise convolution vectorised over channels;
//! - [`direct`]: direct convolution for a first layer's few channels;
//! - [`mbconv`]: an inverted-residual block (expand, depthwise, project) fused band by band,
//!   so its wide intermediate tensors never leave the cache;
//! - [`dense`]: fully connected layers;
//! - [`pool`]: 2x2 max pooling and global average pooling.
//!
//! # Instruction sets
//!
//! The GEMM microkernel is written per architecture (`x86_64.rs` with AVX-512 and AVX2+FMA,
//! `arm64.rs` with NEON, `generic.rs` portable); the other kernels are portable Rust compiled
//! once per instruction set through `multiversion!`, so each is vectorised for the machine
//! it runs on. An [`Isa`] value can only be made for an instruction set the CPU has, which is
//! what makes running the feature-gated code sound. Every kernel takes the [`Isa`] to use, so
//! tests run the portable fallback on any machine.

pub mod conv;
pub mod dense;
pub mod depthwise;
pub mod direct;
pub mod elementwise;
pub mod gemm;
mod generic;
pub mod mbconv;
pub mod pool;
pub mod winograd;

#[cfg(target_arch = "aarch64")]
mod arm64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// An instruction set the running CPU supports. Construct with [`Isa::best`],
/// [`Isa::portable`], [`Isa::by_name`] or [`Isa::supported`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa(Arch);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Arch {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Isa {
    /// Plain Rust, no target features beyond the build's baseline.
    pub fn portable() -> Self {
        Isa(Arch::Portable)
    }

    /// The fastest instruction set this CPU has.
    pub fn best() -> Self {
        *Self::supported()
            .last()
            .expect("portable is always supported")
    }

    /// Every instruction set this CPU has, slowest first (the portable one first).
    pub fn supported() -> Vec<Self> {
        // Other targets (armv7) have the portable instruction set only.
        #[cfg_attr(
            not(any(target_arch = "x86_64", target_arch = "aarch64")),
            allow(unused_mut)
        )]
        let mut out = vec![Isa(Arch::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.push(Isa(Arch::Avx2));
                if is_x86_feature_detected!("avx512f") {
                    out.push(Isa(Arch::Avx512));
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                out.push(Isa(Arch::Neon));
            }
        }
        out
    }

    /// `"portable"`, `"avx2"`, `"avx512"` or `"neon"`, if this CPU has it.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::supported().into_iter().find(|isa| isa.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            Arch::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Arch::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Arch::Avx512 => "avx512",
            #[cfg(target_arch = "aarch64")]
            Arch::Neon => "neon",
        }
    }
}

/// Which implementation runs a network on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// candle's own ops, NCHW, one tensor per op: the reference, and what runs on CUDA.
    Reference,
    /// A compiled plan over this crate's kernels, with this instruction set.
    Fast(Isa),
}

impl Default for Kernels {
    fn default() -> Self {
        Kernels::Fast(Isa::best())
    }
}

impl Kernels {
    /// The name of the environment variable read by [`Kernels::from_env`].
    pub const ENV: &'static str = "EDGEMM_KERNELS";

    /// Parses `reference`, `fast` (the best instruction set), or an instruction set name
    /// (`portable`, `avx2`, `avx512`, `neon`) to force one.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "reference" => Ok(Kernels::Reference),
            "fast" => Ok(Kernels::default()),
            name => Isa::by_name(name).map(Kernels::Fast).ok_or_else(|| {
                let known: Vec<&str> = Isa::supported().iter().map(|i| i.name()).collect();
                Error::Kernels {
                    value: value.to_string(),
                    known: format!("reference, fast, {}", known.join(", ")),
                }
            }),
        }
    }

    /// `EDGEMM_KERNELS` when set, else [`Kernels::default`] (fast).
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.is_empty() => Self::parse(&v),
            _ => Ok(Self::default()),
        }
    }
}

/// An activation a kernel applies to its outputs on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Relu6,
    /// `x * relu6(x + 3) / 6` (MobileNetV3).
    HardSwish,
}

impl Activation {
    /// Applies the activation to every value of `values`: one loop per activation (the
    /// match outside it), which the compiler vectorises.
    #[inline(always)]
    fn apply(self, values: &mut [f32]) {
        match self {
            Activation::None => {}
            Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Relu6 => values.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
            Activation::HardSwish => values.iter_mut().for_each(|v| *v = hard_swish(*v)),
        }
    }

    /// The activation of one value, as [`Activation::apply`] computes it.
    #[inline(always)]
    fn apply_one(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
            Activation::HardSwish => hard_swish(v),
        }
    }
}

/// `x * relu6(x + 3) / 6`, in the operation order every instruction set's store uses
/// (add, clamp, multiply by 1/6, multiply by `x`), so that all of them round alike.
#[inline(always)]
pub(crate) fn hard_swish(x: f32) -> f32 {
    x * ((x + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0))
}

/// One operation of a fused epilogue ([`Fused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostOp {
    Activation(Activation),
    /// Adds the residual (the kernel's `residual` input, shaped like its output).
    Residual,
}

/// What a kernel does to each output value after adding its bias, in order, before writing
/// it: `[Relu6, Residual]` is an activation then a skip connection (a MobileNet block's
/// tail), `[Residual, Relu]` the skip connection then the activation (ResNet's). Every
/// instruction set's store matches [`PostOp`] and [`Activation`] exhaustively, so a new
/// operation is one arm per store, and a list a store cannot run does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fused {
    ops: [PostOp; Fused::MAX],
    len: u8,
}

impl Fused {
    /// The most operations one epilogue holds (activation, residual, activation).
    pub const MAX: usize = 3;
    pub const NONE: Fused = Fused {
        ops: [PostOp::Activation(Activation::None); Fused::MAX],
        len: 0,
    };

    /// This list followed by `op`, or `None` when it is full. `Activation::None` adds
    /// nothing.
    pub fn then(self, op: PostOp) -> Option<Fused> {
        if op == PostOp::Activation(Activation::None) {
            return Some(self);
        }
        let mut next = self;
        *next.ops.get_mut(usize::from(self.len))? = op;
        next.len += 1;
        Some(next)
    }

    /// This list followed by the residual; `expect`s room (lists built by hand).
    pub fn with_residual(self) -> Fused {
        self.then(PostOp::Residual).expect("room for the residual")
    }

    pub fn ops(&self) -> &[PostOp] {
        &self.ops[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn has_residual(&self) -> bool {
        self.ops().contains(&PostOp::Residual)
    }

    /// Checks that a kernel got a residual exactly when its list adds one.
    #[track_caller]
    pub(crate) fn check_residual(&self, residual: bool) {
        assert_eq!(
            self.has_residual(),
            residual,
            "epilogue {self:?} run with residual: {residual}"
        );
    }

    /// Applies the list to `values` (bias already added), `residual` shaped like them: one
    /// pass per operation, each a loop the compiler vectorises.
    #[inline(always)]
    pub(crate) fn apply(&self, values: &mut [f32], residual: Option<&[f32]>) {
        for op in self.ops() {
            match op {
                PostOp::Activation(a) => a.apply(values),
                PostOp::Residual => {
                    let residual = residual.expect("a residual for the epilogue");
                    let residual = &residual[..values.len()];
                    values.iter_mut().zip(residual).for_each(|(v, r)| *v += *r);
                }
            }
        }
    }

    /// The list on one value; `residual` reads its residual.
    #[inline(always)]
    pub(crate) fn apply_one(&self, mut v: f32, residual: impl Fn() -> f32) -> f32 {
        for op in self.ops() {
            v = match op {
                PostOp::Activation(a) => a.apply_one(v),
                PostOp::Residual => v + residual(),
            };
        }
        v
    }

    /// A short name for `inspect` and bench output: `relu6+res`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self
            .ops()
            .iter()
            .map(|op| match op {
                PostOp::Activation(Activation::None) => "none",
                PostOp::Activation(Activation::Relu) => "relu",
                PostOp::Activation(Activation::Relu6) => "relu6",
                PostOp::Activation(Activation::HardSwish) => "hardswish",
                PostOp::Residual => "res",
            })
            .collect();
        names.join("+")
    }
}

impl From<Activation> for Fused {
    fn from(a: Activation) -> Fused {
        Fused::NONE.then(PostOp::Activation(a)).expect("room")
    }
}

/// Defines `fn name(isa: Isa, args..)` running `body` compiled for `isa`'s target features.
///
/// The body is plain Rust over slices; inside a `#[target_feature]` function LLVM vectorises
/// it with that instruction set's registers (AVX-512, AVX2), on aarch64 NEON is the baseline.
/// In the body the constant `FMA` says whether the instruction set has fused multiply-adds
/// (AVX-512 and AVX2 with FMA, NEON): [`fma`] is then one instruction, where Rust never fuses
/// a multiply and an add by itself; elsewhere (the portable path, armv7) `mul_add` would be
/// a library call, and [`fma`] is a multiply and an add.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name(isa: $crate::kernels::Isa, $($arg: $ty),*) {
            #[inline(always)]
            fn body<const FMA: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            fn avx512($($arg: $ty),*) { body::<true>($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) { body::<true>($($arg),*) }
            match isa.arch() {
                // SAFETY: an `Isa` holds an instruction set only when the CPU has it.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Arch::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Arch::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "aarch64")]
                _ => body::<true>($($arg),*),
                #[cfg(not(target_arch = "aarch64"))]
                _ => body::<false>($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// `a * b + c`, fused into one instruction (and one rounding) when `FMA`; see
/// [`multiversion!`].
#[inline(always)]
pub(crate) fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// [`multiversion!`] for an `unsafe fn`: the caller upholds the body's `# Safety` contract.
macro_rules! multiversion_unsafe {
    ($(#[$meta:meta])* $vis:vis unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis unsafe fn $name(isa: $crate::kernels::Isa, $($arg: $ty),*) {
            #[inline(always)]
            unsafe fn body<const FMA: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                // SAFETY: `body`'s contract is this function's, which its caller upholds.
                unsafe { body::<true>($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                // SAFETY: `body`'s contract is this function's, which its caller upholds.
                unsafe { body::<true>($($arg),*) }
            }
            match isa.arch() {
                // SAFETY: an `Isa` holds an instruction set only when the CPU has it; the rest
                // of the contract is the caller's.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Arch::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Arch::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: the caller upholds the contract.
                #[cfg(target_arch = "aarch64")]
                _ => unsafe { body::<true>($($arg),*) },
                // SAFETY: the caller upholds the contract.
                #[cfg(not(target_arch = "aarch64"))]
                _ => unsafe { body::<false>($($arg),*) },
            }
        }
    };
}
pub(crate) use multiversion_unsafe;

impl Isa {
    fn arch(self) -> Arch {
        self.0
    }
}

/// Below this much work (multiply-adds, or elements touched; about 10 us on one core) a
/// kernel call stays on the calling thread. A plan runs its steps on a pool thread, so
/// sharing a call out is a fork-join inside the pool, not a sleep and wake-up of the caller;
/// then it pays from here (A/B runs of the `models` bench at batch 1 on the 2-core machine,
/// medians of 5-6 alternating runs: 8 M -> 2 M multiply-adds took alexnet-small from 1.40 to
/// 1.21 ms and sign-language from 13.2 to 12.0 ms; 2 M -> 512 K took alexnet-small from 1.25
/// to 1.08 ms, sign-language unchanged; 512 K -> 128 K changed neither). When the other cores
/// are busy, a join can wait up to a scheduler slice for its other half.
const PARALLEL_MIN_WORK: usize = 1 << 19;

/// Whether a kernel call doing `work` is worth sharing out over rayon's pool.
pub(crate) fn parallel(work: usize) -> bool {
    work >= PARALLEL_MIN_WORK && rayon::current_num_threads() > 1
}

/// How long a [`with_pool_awake`] spinner polls with nothing to run before it gives up (the
/// serial gaps between a forward's parallel calls are tens of microseconds).
const SPIN_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(1);

thread_local! {
    /// Whether this pool thread is running [`with_pool_awake`]'s spinner.
    static SPINNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on a thread of rayon's pool while the pool's other threads poll for work instead
/// of sleeping, as ONNX Runtime's pool spins between the kernels of a run.
///
/// A pool thread with nothing to do sleeps after a few dozen idle rounds, and on this
/// machine (a VM) waking it costs 30-150 us: the other half of a parallel call started after
/// such a pause runs late or on the caller after its own half. A forward is a chain of
/// parallel calls with short serial gaps and uneven halves, so it paid that often. For the
/// duration of `f`, one spinner job per other pool thread loops on [`rayon::yield_now`],
/// running each piece of work as soon as it is shared out (a 2-way split after a 1 ms pause:
/// 50-150 -> 1-3 us over the work itself). The price is that those threads burn their core
/// while `f` runs instead of sleeping when idle.
pub fn with_pool_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    /// Ends this call's spinners when dropped, so that they stop even if `f` panics.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let mut result = None;
    rayon::scope(|_| {
        let stop = Stop(Arc::new(AtomicBool::new(false)));
        let caller = rayon::current_thread_index();
        // Detached jobs, not the scope's: the scope would wait for each spinner to notice
        // the end and return, and a spinner that another process's thread has just pushed
        // off its core returns a scheduler slice (milliseconds) later. A spinner left
        // running past the end stops as soon as it runs again. Each polls its own call's
        // flag: a thread that picks up another call's spinner while it waits inside its own
        // call must stop when that other call ends, not when every call has.
        for _ in 1..rayon::current_num_threads() {
            let done = Arc::clone(&stop.0);
            rayon::spawn(move || {
                // The caller itself (if it picks the job up while waiting) and a thread that
                // is spinning already return at once: only the other threads spin, one each.
                if rayon::current_thread_index() == caller || SPINNING.get() {
                    return;
                }
                SPINNING.set(true);
                let mut idle_since = None;
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle_since = None;
                        continue;
                    }
                    // A thread that picked this job up while it waits inside a job of this
                    // same call would spin on top of work the call needs: with nothing to
                    // run for SPIN_IDLE_LIMIT, it stops and lets that work go on.
                    let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > SPIN_IDLE_LIMIT {
                        break;
                    }
                    std::hint::spin_loop();
                }
                SPINNING.set(false);
            });
        }
        result = Some(f());
    });
    result.expect("the scope ran f")
}

/// A pointer shared by the threads of one kernel call, each writing a disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(*mut f32);

impl SyncPtr {
    pub(crate) fn new(buffer: &mut [f32]) -> Self {
        SyncPtr(buffer.as_mut_ptr())
    }

    /// The pointer. A method, so that closures capture the whole `Sync` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: kernels hand each thread a disjoint range of the buffer behind the pointer, and the
// buffer outlives the parallel section (it is borrowed mutably by the caller for its length).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

#[cfg(test)]
pub(crate) mod testing {
    //! Shared helpers for the kernel tests: a seeded generator and the error measure.
    /// Test case `case`'s epilogue: the GEMM tests' list of epilogues in turn.
    pub(crate) fn fused_case(case: usize) -> super::Fused {
        let all = super::gemm::tests::epilogues();
        let ops = &all[case % all.len()].1;
        ops.iter()
            .try_fold(super::Fused::NONE, |f, op| f.then(*op))
            .expect("at most Fused::MAX operations")
    }

    /// A small deterministic generator (xorshift), uniform in [-1, 1).
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        pub fn uniform(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }

        pub fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.uniform()).collect()
        }
    }

    /// `max |a - b| / max(max |b|, 1e-6)`: the golden tests' measure, relative to the largest
    /// reference value so that near-zero outputs do not dominate. Infinite when a value of
    /// `a` is not finite where `b`'s is: `f32::max` would skip a NaN, hiding a value that was
    /// never written.
    pub fn max_relative_error(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        if a.iter()
            .zip(b)
            .any(|(x, y)| !x.is_finite() && y.is_finite())
        {
            return f32::INFINITY;
        }
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::with_pool_awake;

    /// Callers on several threads at once, nested calls and a panicking `f`: each gets its
    /// own result and none waits forever on a spinner.
    #[test]
    fn pool_awake_returns_each_result_without_deadlock() {
        let sums: Vec<u64> = std::thread::scope(|s| {
            let callers: Vec<_> = (0..4u64)
                .map(|t| {
                    s.spawn(move || {
                        with_pool_awake(|| {
                            (0..50)
                                .map(|_| {
                                    let inner = with_pool_awake(|| {
                                        (0..1000u64).into_par_iter().map(|i| i * t).sum::<u64>()
                                    });
                                    (0..1000u64).into_par_iter().map(|i| i + t).sum::<u64>() + inner
                                })
                                .sum()
                        })
                    })
                })
                .collect();
            callers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (t, sum) in sums.into_iter().enumerate() {
            let t = t as u64;
            assert_eq!(sum, 50 * (499_500 + 1000 * t + 499_500 * t));
        }
        let caught = std::panic::catch_unwind(|| with_pool_awake(|| panic!("inside f")));
        assert!(caught.is_err());
        assert_eq!(with_pool_awake(|| 7), 7);
    }
}
