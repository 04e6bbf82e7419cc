"""Compile a recorded launch (bench/launches.py) for a GPU that is not here, and read what it became.

Triton's own binder turns the launch's arguments into the signature, constexprs and alignment
attributes a GPU run would compile with (tensors 16-byte aligned, ints divisible by 16 or equal to 1
specialised exactly as on the device); `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 128))`
then builds TTIR, LLVM IR, PTX and a cubin with the ptxas the wheel ships. From those:
- registers, local memory (spills), shared memory: `cuobjdump --dump-resource-usage` on the cubin;
- global loads and stores in SASS (LDG/STG widths) and atomics (ATOM/RED);
- per pointer argument: the widths of its loads and stores (the inline PTX of the LLVM IR, traced back
  to the argument), and how many separate passes a program makes over it (TTIR: the outermost loops
  that load or store through it), from which bench/static_report.py counts bytes.
Works with Triton 3.6 and 3.9 (both keep `JITFunction._pack_args` and `ASTSource(fn, signature,
constexprs, attrs)`).
"""
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from bench.launches import Launch

WARP_SIZE = 32
"""Threads per warp: GPUTarget's last field, as the CUDA driver reports it."""
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
"""ptxas, cuobjdump and nvdisasm ship inside the Triton wheel."""


@dataclass
class PointerAccess:
    """How a kernel touches one pointer argument."""

    load_bits: list[int] = field(default_factory=list)
    """Width in bits of each global load instruction through it (LLVM IR's inline PTX)."""
    store_bits: list[int] = field(default_factory=list)
    atomic: bool = False
    load_passes: int = 0
    """Outermost loops (or straight-line code) of a program that load through it: passes over its data."""
    store_passes: int = 0


@dataclass
class KernelCode:
    """What one specialisation of one kernel compiled to."""

    name: str
    arch: int
    num_warps: int
    registers: int
    local_bytes: int
    """Local memory per thread: spills (these kernels have no local arrays). 0 means no spills."""
    stack_bytes: int
    shared_bytes: int
    sass_loads: dict[str, int]
    """SASS global load opcodes (LDG.E.128, LDG.E.U16, ...) and how many of each."""
    sass_stores: dict[str, int]
    sass_atomics: dict[str, int]
    pointers: dict[str, PointerAccess]
    """By parameter name, each pointer argument the kernel loads, stores or updates."""

    @property
    def widest_load_bytes(self) -> int:
        return max((_sass_width(op) for op in self.sass_loads), default=0)

    @property
    def widest_store_bytes(self) -> int:
        return max((_sass_width(op) for op in self.sass_stores), default=0)

    def resident_programs(self) -> int:
        """Programs one SM holds at once, bounded by registers (allocated per warp in units of 8 per
        thread, 64 K per SM), 64 warps, 32 blocks and 228 KB of shared memory (sm_80/sm_90)."""
        regs_per_warp = -(-max(self.registers, 1) // 8) * 8 * WARP_SIZE
        by_regs = 65536 // (regs_per_warp * self.num_warps)
        by_smem = (228 * 1024) // self.shared_bytes if self.shared_bytes else 32
        return max(0, min(by_regs, 64 // self.num_warps, 32, by_smem))


def _sass_width(opcode: str) -> int:
    """Bytes of a SASS global access: LDG.E.128 -> 16, LDG.E.64 -> 8, LDG.E (32 bit) -> 4, .U16 -> 2."""
    for suffix, width in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in opcode:
            return width
    return 4


def specialise(launch: Launch, arch: int) -> tuple[dict, dict, dict, dict]:
    """(options, signature, constexprs, attrs) exactly as JITFunction.run derives them for this launch."""
    backend = make_backend(GPUTarget("cuda", arch, WARP_SIZE))
    fn = launch.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs, debug=False)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return options.__dict__, signature, constexprs, attrs


def specialisation_key(launch: Launch, arch: int) -> tuple:
    """What makes two launches the same compiled kernel: function, signature, constants, alignment, options."""
    options, signature, constexprs, attrs = specialise(launch, arch)
    return (launch.fn.fn.__module__, launch.name, arch, tuple(signature.items()),
            tuple(sorted((str(k), repr(v)) for k, v in constexprs.items())),
            tuple(sorted((str(k), repr(v)) for k, v in attrs.items())),
            options.get("num_warps"), options.get("num_stages"))


def compile_launch(launch: Launch, arch: int = 90):
    """triton.compile of the launch's specialisation for sm_<arch>: the CompiledKernel (asm: ttir, llir, ptx, cubin)."""
    options, signature, constexprs, attrs = specialise(launch, arch)
    source = ASTSource(launch.fn, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, WARP_SIZE), options=options)


def _tool(name: str, *args: str) -> str:
    done = subprocess.run([str(TOOLS / name), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def resource_usage(cubin: bytes, sass: bool = True) -> tuple[dict[str, int], list[str]]:
    """cuobjdump's REG, STACK, SHARED, LOCAL of the cubin's one kernel, and its SASS opcodes (none
    without `sass`: the disassembly costs ~0.4 s of CPU a kernel, the resource table next to nothing)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        listing = _tool("cuobjdump", "--dump-resource-usage", *(["--dump-sass"] if sass else []), handle.name)
    fields = dict((k, int(v)) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", listing))
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", listing)
    return fields, opcodes


def _count(opcodes: list[str], prefixes: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in opcodes:
        if op.startswith(prefixes):
            out[op] = out.get(op, 0) + 1
    return out


# ------------------------------------------------------------------------------------ pointer tracing

_VALUE = re.compile(r"%([\w.$-]+)")


def _roots_by_value(lines: list[str], args: list[str]) -> dict[str, set[str]]:
    """For each SSA value, the pointer arguments it is derived from (flow-insensitive, to a fixed point)."""
    roots: dict[str, set[str]] = {a: {a} for a in args}
    for _ in range(4):
        changed = False
        for line in lines:
            if "=" not in line:
                continue
            lhs, rhs = line.split("=", 1)
            defined = _VALUE.findall(lhs)
            if not defined:
                continue
            pairs = re.findall(r"%([\w.$-]+)\s*=\s*%([\w.$-]+)", rhs)   # scf.for iter_args(%a = %init)
            for block_arg, init in pairs:
                changed |= _union(roots, block_arg, roots.get(init, set()))
            found = set().union(*(roots.get(v.split("#")[0], set()) for v in _VALUE.findall(rhs)))
            for value in defined:
                changed |= _union(roots, value.split(":")[0], found)
        if not changed:
            break
    return roots


def _union(roots: dict[str, set[str]], key: str, extra: set[str]) -> bool:
    have = roots.setdefault(key, set())
    if extra <= have:
        return False
    have |= extra
    return True


def _ptx_bits(asm: str, opcode: str) -> list[int]:
    """Widths of the `ld.global`/`st.global` instructions in an inline-asm string: v4.b32 -> 128."""
    out = []
    for parts in re.findall(rf"{opcode}\.global((?:\.[\w:]+)*)", asm):
        tokens = parts.split(".")
        vec = next((int(t[1:]) for t in tokens if re.fullmatch(r"v\d+", t)), 1)
        bits = next((int(t[1:]) for t in tokens if re.fullmatch(r"[bufs]\d+", t)), 32)
        out.append(vec * bits)
    return out


def _llir_accesses(llir: str, params: list[str]) -> dict[str, PointerAccess]:
    """Load/store widths per pointer argument, from the LLVM IR's inline PTX (and plain loads/stores)."""
    define = next(line for line in llir.splitlines() if line.startswith("define"))
    header = define[define.index("(") + 1:]
    arg_values = re.findall(r"ptr addrspace\(1\)[^,%]*%([\w.]+)", header)
    all_args = re.findall(r"%([\w.]+)", header)
    names = {value: params[all_args.index(value)] for value in arg_values if all_args.index(value) < len(params)}
    body = [line for line in llir.splitlines() if not line.startswith(("define", "declare", "!", "attributes"))]
    roots = _roots_by_value(body, list(names))
    access: dict[str, PointerAccess] = {}
    for line in body:
        pointers = re.findall(r"ptr addrspace\(1\)\s+%([\w.]+)", line)
        if not pointers:
            continue
        args = set().union(*(roots.get(p, set()) for p in pointers))
        loads, stores = _ptx_bits(line, "ld"), _ptx_bits(line, "st")
        plain = re.search(r"=\s*load\s+(<(\d+) x )?(i|bfloat|half|float|double)(\d*)", line)
        if plain and "asm" not in line:
            loads.append(int(plain.group(2) or 1) * {"bfloat": 16, "half": 16, "float": 32, "double": 64}.get(
                plain.group(3), int(plain.group(4) or 32)))
        atomic = bool(re.search(r"\b(atom|red)\.global|atomicrmw|cmpxchg", line))
        for arg in args:
            entry = access.setdefault(names[arg], PointerAccess())
            entry.load_bits += loads
            entry.store_bits += stores
            entry.atomic |= atomic
    return access


def _ttir_passes(ttir: str, params: list[str], access: dict[str, PointerAccess]) -> None:
    """Fill load_passes/store_passes: distinct outermost loops (or top-level code) touching each pointer."""
    lines = ttir.splitlines()
    start = next(i for i, line in enumerate(lines) if "tt.func" in line and "public" in line)
    header = lines[start]
    arg_values = re.findall(r"%([\w.$-]+)\s*:\s*(!tt\.ptr)?", header[header.index("(") + 1:])
    names = {value: params[i] for i, (value, pointer) in enumerate(arg_values) if i < len(params) and pointer}
    body = lines[start + 1:]
    roots = _roots_by_value(body, list(names))
    stack: list[str] = []
    seen: dict[tuple[str, str], set[str]] = {}
    for number, line in enumerate(body):
        text = line.strip()
        if text.startswith("}"):
            if stack:
                stack.pop()
            if not text.endswith("{"):
                continue
            text = text.lstrip("}) ").strip()
        kind = None
        if re.search(r"\btt\.(load|descriptor_load)\b", text):
            kind = "load"
        elif re.search(r"\btt\.(store|descriptor_store|atomic_rmw|atomic_cas)\b", text):
            kind = "store"
        if kind:
            operand = _VALUE.findall(text.split("=", 1)[-1] if kind == "load" else text)
            pointer_roots = roots.get(operand[0].split("#")[0], set()) if operand else set()
            region = next((r for r in stack if r.startswith("loop")), "top")
            for arg in pointer_roots:
                seen.setdefault((names[arg], kind), set()).add(region)
        if text.endswith("{"):
            stack.append(f"loop{number}" if re.search(r"\bscf\.(for|while)\b", text) else f"block{number}")
    for (name, kind), regions in seen.items():
        entry = access.setdefault(name, PointerAccess())
        if kind == "load":
            entry.load_passes = len(regions)
        else:
            entry.store_passes = len(regions)


def inspect(kernel, name: str, arch: int, params: list[str], sass: bool = True) -> KernelCode:
    """Read a CompiledKernel: resources, SASS accesses (empty without `sass`), and per pointer parameter
    its widths and passes. `params` are the kernel's non-constexpr parameter names in order (the
    compiled function's arguments)."""
    fields, opcodes = resource_usage(kernel.asm["cubin"], sass)
    pointers = _llir_accesses(kernel.asm["llir"], params)
    _ttir_passes(kernel.asm["ttir"], params, pointers)
    return KernelCode(
        name=name, arch=arch, num_warps=kernel.metadata.num_warps, registers=fields.get("REG", 0),
        local_bytes=fields.get("LOCAL", 0), stack_bytes=fields.get("STACK", 0), shared_bytes=fields.get("SHARED", 0),
        sass_loads=_count(opcodes, ("LDG",)), sass_stores=_count(opcodes, ("STG",)),
        sass_atomics=_count(opcodes, ("ATOM", "RED")), pointers=pointers)


_CODE: dict[tuple, KernelCode] = {}
"""Compiled and inspected specialisations of this process, by specialisation_key."""


def pointer_traffic(launch: Launch, code: KernelCode) -> list[tuple[str, object, PointerAccess, int]]:
    """(name, tensor, access, bytes moved) of each tensor argument the compiled kernel dereferences: its
    size once per pass a program makes over it. An argument it never dereferences (a stand-in for an absent
    logit) is left out; one it loads or stores with no traced pass is an error, not zero bytes."""
    out = []
    for name, tensor in launch.tensors().items():
        access = code.pointers.get(name)
        if access is None:
            continue
        passes = access.load_passes + access.store_passes
        if passes == 0 and (access.load_bits or access.store_bits or access.atomic):
            raise ValueError(f"{launch.name}: {name} is loaded or stored but no pass over it was traced: "
                             f"its bytes cannot be counted (bench/gpu_code.py's _ttir_passes)")
        out.append((name, tensor, access, tensor.numel() * tensor.element_size() * passes))
    return out


def kernel_code(launch: Launch, arch: int = 90, sass: bool = True) -> KernelCode:
    """The launch's specialisation compiled for sm_<arch> and inspected; one compilation per
    specialisation and process (launches that share a specialisation share the result)."""
    key = (specialisation_key(launch, arch), sass)
    if key not in _CODE:
        _, signature, _, _ = specialise(launch, arch)
        params = [name for name, kind in signature.items() if kind != "constexpr"]
        _CODE[key] = inspect(compile_launch(launch, arch), launch.name, arch, params, sass)
    return _CODE[key]
