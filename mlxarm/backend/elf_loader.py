"""Loading compiled kernels without LLVM: a small loader of ELF relocatable objects.

Kernels are cached on disk as object code (``cache``). Loading such an object through llvmlite's
MCJIT would bring LLVM itself into the process (a 178 MB library: importing it costs about 40 MiB of
resident memory) even when every kernel a program runs is cached. This module loads the objects LLVM
emits for the host (ELF64, little endian, ``ET_REL``, x86-64 or aarch64) by itself, so llvmlite is
only imported to compile a kernel the cache lacks.

An object's allocated sections (code, constant pools, data, zero-filled bss; not ``.eh_frame``: no
unwinding ever passes through a kernel) are laid out in one anonymous mapping (``layout``): code first,
with a stub per external function the code calls, then read-only data with a GOT slot per symbol the
code reaches through the GOT, then writable data, each part on pages of its own. Everything an object
refers to lies within its own mapping, so no displacement of any code model can fall short; the stubs
(``jmp *0(%rip)`` or ``ldr x16, #8; br x16`` and the address) reach functions anywhere. ``link``
applies the relocations to an image of that layout for a given address, a pure function of the
object, that address and the addresses of its external symbols, so objects for either architecture
can be linked (and checked) on any host. ``Loader.load`` maps an image read-write, writes it, then
makes the code read+execute and the constants read-only: a page is never written after it became
executable.

An external symbol is what the loader was told (``Loader.define``: functions of objects loaded
earlier, such as the half-precision conversions of ``llvm_runtime``), else the process's own (the C
library: ``memset``, ``syscall``...), else the C math library's. Malformed object code, a relocation
type the loader does not know or a symbol found nowhere raise ``LoadError``.
"""
from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import struct
import weakref
from dataclasses import dataclass

from ..core.errors import CompileError

EM_X86_64, EM_AARCH64 = 62, 183
_MACHINES = {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64, "arm64": EM_AARCH64}
_SHT_RELA, _SHT_NOBITS, _SHT_REL, _SHT_SYMTAB = 4, 8, 9, 2
_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 1, 2, 4
_SHN_UNDEF, _SHN_ABS = 0, 0xFFF1
_STB_LOCAL = 0
_PAGE = 4096  # of ``link``'s images for another host; ``Loader`` uses the host's
_STUB = 16  # bytes of a far-call stub (8-byte aligned address inside)
_SIZE_MAX = 1 << 26  # bytes of a section at most: kernels' are kilobytes


class LoadError(CompileError):
    """Object code that cannot be loaded: malformed, for another machine, or needing a relocation or
    a symbol the loader does not know."""


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    flags: int
    size: int
    align: int
    data: bytes | None  # None: zero-filled (bss)


@dataclass(frozen=True)
class Symbol:
    name: str
    section: int  # its section's index, _SHN_UNDEF or _SHN_ABS
    value: int
    exported: bool  # global or weak


@dataclass(frozen=True)
class Relocation:
    offset: int
    type: int
    symbol: int
    addend: int


@dataclass(frozen=True)
class ObjectFile:
    machine: int
    sections: dict  # index -> Section: the sections loaded
    symbols: list
    relocations: dict  # index of a loaded section -> [Relocation]


# The relocations the loader applies, by machine and type: those of the executor's kernels (x86-64's
# large code model: R_X86_64_64 alone; aarch64's small one: page-relative ADRP with the low 12 bits in
# ADD or a load/store of any size, and calls), of x86-64's small position-independent model, and of
# aarch64's large model (MOVZ/MOVK), with a tail call and the GOT. Each is (name, kind, value, field):
# kind says which address S stands for the symbol ("" its own, "call" its stub's when it is external,
# "got" its GOT slot's), value computes the relocation from S, the addend A and the place P, field says
# how it is written.
def _abs(s, a, p):
    return s + a


def _rel(s, a, p):
    return s + a - p


def _page(s, a, p):  # aarch64's Page(S + A) - Page(P), Page(x) = x & ~0xFFF
    return ((s + a) & -4096) - (p & -4096)


_RELOCATIONS = {
    EM_X86_64: {
        1: ("R_X86_64_64", "", _abs, "word64"),
        2: ("R_X86_64_PC32", "", _rel, "int32"),
        4: ("R_X86_64_PLT32", "call", _rel, "int32"),
        42: ("R_X86_64_REX_GOTPCRELX", "got", _rel, "int32"),
    },
    EM_AARCH64: {
        264: ("R_AARCH64_MOVW_UABS_G0_NC", "", _abs, ("movw", 0)),
        266: ("R_AARCH64_MOVW_UABS_G1_NC", "", _abs, ("movw", 1)),
        268: ("R_AARCH64_MOVW_UABS_G2_NC", "", _abs, ("movw", 2)),
        269: ("R_AARCH64_MOVW_UABS_G3", "", _abs, ("movw", 3)),
        275: ("R_AARCH64_ADR_PREL_PG_HI21", "", _page, "adrp"),
        277: ("R_AARCH64_ADD_ABS_LO12_NC", "", _abs, ("lo12", 0)),
        278: ("R_AARCH64_LDST8_ABS_LO12_NC", "", _abs, ("lo12", 0)),
        282: ("R_AARCH64_JUMP26", "call", _rel, "branch26"),
        283: ("R_AARCH64_CALL26", "call", _rel, "branch26"),
        284: ("R_AARCH64_LDST16_ABS_LO12_NC", "", _abs, ("lo12", 1)),
        285: ("R_AARCH64_LDST32_ABS_LO12_NC", "", _abs, ("lo12", 2)),
        286: ("R_AARCH64_LDST64_ABS_LO12_NC", "", _abs, ("lo12", 3)),
        299: ("R_AARCH64_LDST128_ABS_LO12_NC", "", _abs, ("lo12", 4)),
        311: ("R_AARCH64_ADR_GOT_PAGE", "got", _page, "adrp"),
        312: ("R_AARCH64_LD64_GOT_LO12_NC", "got", _abs, ("lo12", 3)),
    },
}


def _stub(machine: int, target: int) -> bytes:
    """A jump to ``target`` from anywhere, _STUB bytes (its address 8-byte aligned at offset 8 on
    aarch64, where x16 is the scratch register the procedure call standard leaves to veneers)."""
    if machine == EM_X86_64:  # jmp *0(%rip); .quad target; int3 padding
        return b"\xff\x25\x00\x00\x00\x00" + struct.pack("<Q", target) + b"\xcc\xcc"
    return struct.pack("<IIQ", 0x58000050, 0xD61F0200, target)  # ldr x16, #8; br x16; .quad target


def parse(obj: bytes) -> ObjectFile:
    """The parts of an ELF relocatable object that loading it needs."""
    try:
        return _parse(obj)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
        raise LoadError(f"[llvm] Malformed object code ({len(obj)} bytes): {e}") from None


def _parse(obj: bytes) -> ObjectFile:
    if obj[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not a little-endian ELF64 object")
    e_type, machine = struct.unpack_from("<HH", obj, 16)
    if e_type != 1:
        raise ValueError(f"ELF type {e_type}, not a relocatable object")
    if machine not in _RELOCATIONS:
        raise ValueError(f"machine {machine} is neither x86-64 nor aarch64")
    table = _RELOCATIONS[machine]
    (shoff,) = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", obj, 0x3A)
    if shentsize != 64:
        raise ValueError(f"section headers of {shentsize} bytes")
    # name, type, flags, address, offset, size, link, info, alignment, entry size
    headers = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + 64 * i) for i in range(shnum)]

    def contents(index: int) -> bytes:
        offset, size = headers[index][4:6]
        if offset + size > len(obj):
            raise ValueError(f"section {index} runs past the end ({offset} + {size} bytes)")
        return obj[offset:offset + size]

    def string(strings: bytes, at: int) -> str:
        return strings[at:strings.index(b"\0", at)].decode()

    names = contents(shstrndx)
    sections, symbols = {}, []
    for i, (name, kind, flags, _, _, size, link, _, align, _) in enumerate(headers):
        if kind == _SHT_REL:
            raise ValueError(f"section {string(names, name)} holds REL relocations, not RELA")
        if flags & _SHF_ALLOC and string(names, name) != ".eh_frame":
            if align & (align - 1) or align > _PAGE or size > _SIZE_MAX:
                raise ValueError(f"section {string(names, name)} of {size} bytes aligned to {align}")
            sections[i] = Section(i, string(names, name), flags, size, max(align, 1),
                                  None if kind == _SHT_NOBITS else contents(i))
        elif kind == _SHT_SYMTAB:
            strings = contents(link)
            symbols = [Symbol(string(strings, n), shndx, value, info >> 4 != _STB_LOCAL)
                       for n, info, _, shndx, value, _ in struct.iter_unpack("<IBBHQQ", contents(i))]
    relocations = {}
    for i, (_, kind, _, _, _, _, _, target, _, _) in enumerate(headers):
        if kind != _SHT_RELA or target not in sections:
            continue
        relocations[target] = [Relocation(at, word & 0xFFFFFFFF, word >> 32, addend)
                               for at, word, addend in struct.iter_unpack("<QQq", contents(i))]
        for r in relocations[target]:
            width = 8 if table.get(r.type, (None,) * 4)[3] == "word64" else 4
            if r.symbol >= len(symbols) or r.offset + width > sections[target].size:
                raise ValueError(f"a relocation of {sections[target].name} out of range")
    return ObjectFile(machine, sections, symbols, relocations)


@dataclass(frozen=True)
class Layout:
    offsets: dict  # section index -> its offset in the image
    stubs: dict  # symbol index -> offset of its far-call stub
    got: dict  # symbol index -> offset of its GOT slot
    code: int  # [0, code): code and stubs, read+execute once written
    constants: int  # [code, constants): read-only data and the GOT; then writable data
    size: int


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def layout(obj: ObjectFile, page: int = _PAGE) -> Layout:
    """Where each loaded section, far-call stub and GOT slot of ``obj`` goes in its image."""
    table = _RELOCATIONS[obj.machine]
    stubs, got = {}, {}
    for relocations in obj.relocations.values():
        for r in relocations:
            kind = table.get(r.type, (None, ""))[1]
            if kind == "call" and obj.symbols[r.symbol].section == _SHN_UNDEF:
                stubs[r.symbol] = 0
            elif kind == "got":
                got[r.symbol] = 0
    offsets, end = {}, 0

    def place(sections) -> None:
        nonlocal end
        for s in sections:
            end = _align(end, s.align)
            offsets[s.index] = end
            end += s.size

    def slots(table: dict, size: int) -> None:
        nonlocal end
        end = _align(end, size)
        for symbol in table:
            table[symbol] = end
            end += size

    parts = obj.sections.values()
    place(s for s in parts if s.flags & _SHF_EXECINSTR)
    slots(stubs, _STUB)
    code = end = _align(end, page)
    place(s for s in parts if not s.flags & (_SHF_EXECINSTR | _SHF_WRITE))
    slots(got, 8)
    constants = end = _align(end, page)
    place(s for s in parts if s.flags & _SHF_WRITE and not s.flags & _SHF_EXECINSTR)
    return Layout(offsets, stubs, got, code, constants, _align(max(end, 1), page))


def link(obj: ObjectFile, where: Layout, base: int, resolve) -> bytearray:
    """The image of ``obj`` laid out as ``where`` says, relocated to run at address ``base``;
    ``resolve(name)`` gives the address of an external symbol."""
    image = bytearray(where.size)
    for index, s in obj.sections.items():
        if s.data is not None:
            image[where.offsets[index]:where.offsets[index] + s.size] = s.data
    addresses: dict = {}

    def address(index: int) -> int:
        if index not in addresses:
            sym = obj.symbols[index]
            if sym.section == _SHN_UNDEF:
                addresses[index] = resolve(sym.name)
            elif sym.section == _SHN_ABS:
                addresses[index] = sym.value
            elif sym.section in where.offsets:
                addresses[index] = base + where.offsets[sym.section] + sym.value
            else:
                raise LoadError(f"[llvm] Object code refers to symbol {sym.name!r} of section {sym.section}, "
                                f"which is not loaded.")
        return addresses[index]

    for index, at in where.stubs.items():
        image[at:at + _STUB] = _stub(obj.machine, address(index))
    for index, at in where.got.items():
        struct.pack_into("<Q", image, at, address(index))
    table = _RELOCATIONS[obj.machine]
    for index, relocations in obj.relocations.items():
        for r in relocations:
            if r.type not in table:
                raise LoadError(f"[llvm] Object code has relocation type {r.type}, which the loader does "
                                f"not apply (in {obj.sections[index].name}, for {_describe(obj, r.symbol)}).")
            name, kind, value, field = table[r.type]
            at = where.offsets[index] + r.offset
            if kind == "got":
                target = base + where.got[r.symbol]
            elif kind == "call" and r.symbol in where.stubs:
                target = base + where.stubs[r.symbol]
            else:
                target = address(r.symbol)
            _write(image, at, field, value(target, r.addend, base + at), name, lambda: _describe(obj, r.symbol))
    return image


def _describe(obj: ObjectFile, index: int) -> str:
    sym = obj.symbols[index]
    if sym.name or sym.section not in obj.sections:
        return f"symbol {sym.name!r}"
    return f"section {obj.sections[sym.section].name}"


def exports(obj: ObjectFile, where: Layout) -> dict:
    """The offsets in the image of the global symbols ``obj`` defines, by name."""
    return {s.name: where.offsets[s.section] + s.value for s in obj.symbols
            if s.exported and s.section in where.offsets}


def _write(image: bytearray, at: int, field, v: int, name: str, target) -> None:
    """Write relocation ``name``'s value ``v`` into ``image`` at ``at`` as ``field`` says
    (``target()`` describes what it refers to, for the error when it does not fit)."""

    def check(ok: bool) -> None:
        if not ok:
            raise LoadError(f"[llvm] Relocation {name} for {target()} does not fit: {v:#x}.")

    if field == "word64":
        struct.pack_into("<Q", image, at, v & 0xFFFFFFFFFFFFFFFF)
        return
    if field == "int32":
        check(-1 << 31 <= v < 1 << 31)
        struct.pack_into("<i", image, at, v)
        return
    (insn,) = struct.unpack_from("<I", image, at)
    if field == "branch26":  # B / BL: imm26 words
        check(v & 3 == 0 and -(1 << 27) <= v < 1 << 27)
        insn = insn & ~0x3FFFFFF | (v >> 2) & 0x3FFFFFF
    elif field == "adrp":  # ADRP: a 21-bit page delta, immlo in bits 29-30, immhi in bits 5-23
        check(-(1 << 32) <= v < 1 << 32)
        pages = v >> 12
        insn = insn & ~(3 << 29 | 0x7FFFF << 5) | (pages & 3) << 29 | (pages >> 2 & 0x7FFFF) << 5
    elif field[0] == "lo12":  # ADD / LDR / STR: the low 12 bits, in units of the access size
        shift = field[1]
        check(v & (1 << shift) - 1 == 0)
        insn = insn & ~(0xFFF << 10) | ((v & 0xFFF) >> shift) << 10
    else:  # ("movw", group): MOVZ / MOVK: the group-th 16 bits of the value
        insn = insn & ~(0xFFFF << 5) | (v >> 16 * field[1] & 0xFFFF) << 5
    struct.pack_into("<I", image, at, insn)


class Image:
    """One object loaded: its mapping (unmapped when this dies) and the addresses of its symbols."""

    def __init__(self, base: int, size: int, symbols: dict):
        self.base, self.size, self.symbols = base, size, symbols
        # Not at exit: helper threads may still be inside the code then; the mapping goes with the process.
        weakref.finalize(self, _libc.munmap, base, size).atexit = False

    def address(self, name: str) -> int | None:
        return self.symbols.get(name)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


def _lookup(library, name: str) -> int | None:
    try:
        return ctypes.cast(library[name], ctypes.c_void_p).value
    except AttributeError:
        return None


@functools.cache
def _math_library():
    """The C math library, loaded when a symbol is not in the process already (CPython links it
    on most systems; on others the C library has the math functions)."""
    import ctypes.util

    for name in ("libm.so.6", ctypes.util.find_library("m")):
        try:
            return ctypes.CDLL(name) if name else None
        except OSError:
            continue
    return None


def process_symbol(name: str) -> int | None:
    """The address of ``name`` in the process (its C library, any library loaded globally) or in the
    C math library, or None."""
    address = _lookup(_libc, name)
    if address is None and _math_library() is not None:
        address = _lookup(_math_library(), name)
    return address


def _clear_cache():
    """libgcc's ``__clear_cache`` where the process has it (aarch64 Linux makes the instruction cache
    coherent when mprotect first makes a page executable; this is the portable way to ask)."""
    try:
        fn = _libc["__clear_cache"]
    except AttributeError:
        return None
    fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_void_p), None
    return fn


class Loader:
    """Loads objects for the host into memory; external symbols resolve to those ``define``-d here,
    then to the process's."""

    def __init__(self):
        self.machine = _MACHINES.get(platform.machine().lower())
        self.symbols: dict = {}
        self.page = mmap.PAGESIZE
        self.clear_cache = _clear_cache() if self.machine == EM_AARCH64 else None

    def define(self, name: str, address: int) -> None:
        self.symbols[name] = address

    def resolve(self, name: str) -> int:
        address = self.symbols.get(name) or process_symbol(name)
        if not address:
            raise LoadError(f"[llvm] Kernel code refers to {name!r}, which neither the process nor its C "
                            f"math library defines.")
        return address

    def load(self, obj: bytes) -> Image:
        parsed = parse(obj)
        if parsed.machine != self.machine:
            raise LoadError(f"[llvm] Object code for machine {parsed.machine} cannot run on this "
                            f"{platform.machine()} host.")
        where = layout(parsed, self.page)
        # every external symbol resolved before anything is mapped
        external = {s.name: self.resolve(s.name) for s in parsed.symbols if s.section == _SHN_UNDEF and s.name}
        base = _libc.mmap(None, where.size, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise LoadError(f"[llvm] Mapping {where.size} bytes for object code failed "
                            f"(errno {ctypes.get_errno()}).")
        # unmapped again if anything below fails
        image = Image(base, where.size, {name: base + at for name, at in exports(parsed, where).items()})
        data = link(parsed, where, base, external.__getitem__)
        ctypes.memmove(base, (ctypes.c_char * where.size).from_buffer(data), where.size)
        for start, end, prot in ((0, where.code, mmap.PROT_READ | mmap.PROT_EXEC),
                                 (where.code, where.constants, mmap.PROT_READ)):
            if end > start and _libc.mprotect(base + start, end - start, prot):
                raise LoadError(f"[llvm] Protecting object code failed (errno {ctypes.get_errno()}).")
        if self.clear_cache is not None and where.code:
            self.clear_cache(base, base + where.code)
        return image
