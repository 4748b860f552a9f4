#!/usr/bin/env python3
"""Build the firmware stand-in: a 32-bit MicroPython unix port with the device package frozen in.

Usage:
    python tools/firmware.py build [--src PATH] [--cache DIR] [--json]
    python tools/firmware.py path  [--src PATH] [--cache DIR] [--json]

`build` prints the path of the binary, building it first unless the cache
already holds one for the same inputs; `path` prints it only when it is
already built (exit 1 otherwise). Progress and errors go to stderr.

Why a stand-in: an ESP32 without PSRAM runs MicroPython with frozen code
and a GC heap that starts at 56 KiB and grows once, to 111,936 bytes in two
areas. The unix port built here copies the parts that decide whether our
code fits: 32-bit objects, the package frozen through device/manifest.py
(its code lives outside the GC heap, as on a board), and a heap that starts
at 56 KiB and grows, in new areas, up to the `-X heapsize` given. The
growth uses MicroPython's own MICROPY_GC_SPLIT_HEAP_AUTO code, the code the
ESP32 port runs; only the question "how much more memory is there" is
answered by us (HEAP_C below) instead of by the IDF heap. See
docs/firmware.md for what it does not copy.

Source: --src, else $TRUSTFLEET_MICROPYTHON_SRC, else
shared/micropython/micropython-1.27.0.tar.gz beside the repository (or beside a
folder above it). A
tarball or an unpacked tree; it is never written to: the build runs in a
copy under the cache. Cache: ${XDG_CACHE_HOME:-~/.cache}/trustfleet/firmware/<key>/,
where the key covers the source's identity, the bytes of every frozen file,
the build flags and this tool's version, so a change to any of them builds
a new binary and an unchanged tree reuses the old one.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE_MANIFEST = REPO_ROOT / "device" / "manifest.py"
DEFAULT_TARBALL = REPO_ROOT.parent / "shared" / "micropython" / "micropython-1.27.0.tar.gz"
# The tarball's sha256, from ../shared/micropython/README.md (v1.27.0, commit 78ff170de9e3).
KNOWN_TARBALLS = {
    "micropython-1.27.0.tar.gz":
        "3ee72b3d0e085647bce8b2297096e53a9266f2123eb603034ac47aeb1627a477",
}
SRC_ENV = "TRUSTFLEET_MICROPYTHON_SRC"
BINARY_NAME = "micropython"
# Bump when the build recipe changes in a way the flags below do not show.
TOOL_VERSION = "1"
# The ESP32 port's first GC area without PSRAM (ports/esp32/mpconfigport.h).
INITIAL_AREA = 56 * 1024
JOBS = str(max(1, min(os.cpu_count() or 1, 4)))

# Features whose code lives in git submodules (absent from the release
# tarball) or needs 32-bit system libraries: left out. BTREE and FFI need
# berkeley-db/libffi, SSL needs mbedtls.
PORT_FLAGS = (
    "MICROPY_PY_FFI=0",
    "MICROPY_PY_BTREE=0",
    "MICROPY_PY_SSL=0",
    "MICROPY_SSL_MBEDTLS=0",
    "MICROPY_FORCE_32BIT=1",
    "LDFLAGS_EXTRA=-Wl,--wrap=gc_init",
    # gc.c's split-heap growth does arithmetic on a void pointer (GNU C, as
    # the ESP32 build allows); the unix port's -Werror would refuse it.
    "CFLAGS_EXTRA=-include tf_heap.h -Wno-pointer-arith",
)

# Included first in every C file of the port (CFLAGS_EXTRA above): turns on
# the automatic split heap and routes its area allocations through HEAP_C.
HEAP_H = f"""\
/* trustfleet firmware stand-in: an ESP32-like GC heap (written by tools/firmware.py). */
#ifndef TF_HEAP_H
#define TF_HEAP_H
#include <stddef.h>
#define MICROPY_GC_SPLIT_HEAP (1)
#define MICROPY_GC_SPLIT_HEAP_AUTO (1)
#define TF_HEAP_INITIAL_AREA ({INITIAL_AREA})
void *tf_heap_alloc(size_t size);
void tf_heap_free(void *ptr);
#define MP_PLAT_ALLOC_HEAP(size) tf_heap_alloc(size)
#define MP_PLAT_FREE_HEAP(ptr) tf_heap_free(ptr)
#endif
"""

# The unix port's main() hands gc_init() one block of `-X heapsize` bytes.
# Linked with --wrap=gc_init, the port calls __wrap_gc_init instead: it
# takes the block's size as the budget for the whole heap, starts the GC on
# its first TF_HEAP_INITIAL_AREA bytes only (the rest of the block is never
# used), and lets gc.c's split-heap code add areas later, up to the budget.
# gc.c frees an area again when a collection leaves it empty (as on an
# ESP32), so the areas are tracked with their sizes.
HEAP_C = """\
/* trustfleet firmware stand-in: GC heap that starts small and grows to -X heapsize. */
#include <stdlib.h>
#include "py/mpconfig.h"
#include "py/gc.h"

#define TF_MAX_AREAS (16)

static size_t tf_budget;
static size_t tf_in_areas;
static void *tf_area_ptr[TF_MAX_AREAS];
static size_t tf_area_size[TF_MAX_AREAS];

void __real_gc_init(void *start, void *end);

void __wrap_gc_init(void *start, void *end) {
    size_t size = (size_t)((char *)end - (char *)start);
    size_t first = size < TF_HEAP_INITIAL_AREA ? size : TF_HEAP_INITIAL_AREA;
    tf_budget = size;
    tf_in_areas = first;
    __real_gc_init(start, (char *)start + first);
}

size_t gc_get_max_new_split(void) {
    return tf_budget > tf_in_areas ? tf_budget - tf_in_areas : 0;
}

void *tf_heap_alloc(size_t size) {
    if (size > tf_budget - tf_in_areas) {
        return NULL;
    }
    for (int i = 0; i < TF_MAX_AREAS; i++) {
        if (tf_area_ptr[i] == NULL) {
            void *ptr = malloc(size);
            if (ptr != NULL) {
                tf_area_ptr[i] = ptr;
                tf_area_size[i] = size;
                tf_in_areas += size;
            }
            return ptr;
        }
    }
    return NULL;
}

void tf_heap_free(void *ptr) {
    for (int i = 0; i < TF_MAX_AREAS; i++) {
        if (tf_area_ptr[i] == ptr) {
            tf_in_areas -= tf_area_size[i];
            tf_area_ptr[i] = NULL;
            tf_area_size[i] = 0;
            break;
        }
    }
    free(ptr);
}
"""

USERMOD_MK = "SRC_USERMOD_C += $(USERMOD_DIR)/tf_heap.c\n"

# The frozen manifest of the stand-in: asyncio (frozen on ESP32 firmware
# too) and the device package through its own manifest, copied beside it.
TOP_MANIFEST = 'include("$(MPY_DIR)/extmod/asyncio")\ninclude("device/manifest.py")\n'

# Parts of an unpacked source tree the unix build reads; the rest (other
# ports, docs, tests, git submodules) is not copied into the build.
TREE_PARTS = ("py", "extmod", "shared", "drivers", "lib", "mpy-cross", "tools",
              "ports/unix", "LICENSE")


class FirmwareError(Exception):
    """A build cannot go on; the message says why and how to fix it."""


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"firmware: {message}", file=sys.stderr, flush=True)


# --- what gets frozen -------------------------------------------------------

def frozen_files(manifest: Path = DEVICE_MANIFEST) -> dict[str, bytes]:
    """Every file `manifest` freezes (and the manifest), by path relative to its folder.

    Evaluates the manifest the way MicroPython's tools/manifestfile.py does
    for the calls our manifests use (metadata, package, module, include of a
    relative path). Anything else is refused rather than guessed, so the
    cache key can never miss a frozen file.
    """
    root = manifest.resolve().parent
    found: dict[str, bytes] = {}

    def add(path: Path) -> None:
        path = path.resolve()
        try:
            rel = path.relative_to(root)
        except ValueError:
            raise FirmwareError(f"{manifest} freezes {path}, outside {root}") from None
        found[rel.as_posix()] = path.read_bytes()

    def run(path: Path) -> None:
        add(path)
        base_dir = path.parent

        def metadata(**_kw: object) -> None:
            return None

        def package(name: str, files: tuple[str, ...] | None = None, base_path: str = ".",
                    opt: int | None = None) -> None:
            top = base_dir / base_path / name
            names = files if files is not None else sorted(
                p.relative_to(top).as_posix() for p in top.rglob("*.py"))
            for item in names:
                add(top / item)

        def module(name: str, base_path: str = ".", opt: int | None = None) -> None:
            add(base_dir / base_path / name)

        def include(target: str, **_kw: object) -> None:
            if "$(" in target:
                raise FirmwareError(f"{path}: include({target!r}) uses a path variable; "
                                    "tools/firmware.py only follows relative includes")
            sub = base_dir / target
            run(sub / "manifest.py" if sub.is_dir() else sub)

        def unsupported(name: str):
            def call(*_a: object, **_kw: object) -> None:
                raise FirmwareError(f"{path}: {name}() is not supported by tools/firmware.py")
            return call

        scope: dict[str, object] = {"__file__": str(path), "metadata": metadata,
                                    "package": package, "module": module, "include": include}
        for name in ("require", "freeze", "freeze_as_str", "freeze_as_mpy",
                     "freeze_mpy", "add_library", "options"):
            scope[name] = unsupported(name)
        exec(compile(path.read_text(), str(path), "exec"), scope)

    run(manifest.resolve())
    return found


# --- the source and the cache key ------------------------------------------

def default_tarball() -> Path:
    """shared/micropython/<release tarball> beside the repository, or beside any folder above
    it (a checkout may sit deeper than the workspace's shared/); else the usual place."""
    for folder in REPO_ROOT.parents:
        candidate = folder / "shared" / "micropython" / DEFAULT_TARBALL.name
        if candidate.is_file():
            return candidate
    return DEFAULT_TARBALL


def resolve_source(src: str | None) -> Path:
    """The MicroPython source to build: --src, else $TRUSTFLEET_MICROPYTHON_SRC, else the default."""
    chosen = src or os.environ.get(SRC_ENV) or str(default_tarball())
    path = Path(chosen).expanduser().resolve()
    if not path.exists():
        raise FirmwareError(
            f"no MicroPython source at {path}: pass --src PATH (a MicroPython source tree "
            f"or release tarball) or set {SRC_ENV}")
    if path.is_dir() and not (path / "py" / "gc.c").is_file():
        raise FirmwareError(f"{path} is not a MicroPython source tree (no py/gc.c)")
    if path.is_file() and not tarfile.is_tarfile(path):
        raise FirmwareError(f"{path} is neither a directory nor a tar archive")
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_files(root: Path) -> Iterator[Path]:
    """The files of TREE_PARTS under `root`, without build output, git data or submodules."""
    for part in TREE_PARTS:
        top = root / part
        if top.is_file():
            yield top
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames
                if not d.startswith(("build", ".git"))
                # A git submodule holds a .git entry: the tarball build needs none of them.
                and not (here == root / "lib" and (here / d / ".git").exists()))
            for name in sorted(filenames):
                yield here / name


def source_identity(path: Path) -> str:
    """What names this source for the cache key.

    A tarball: its sha256 (checked against KNOWN_TARBALLS when its name is
    listed). A tree: a digest of the path, size and modification time of
    every file the build reads, so an edit anywhere in it builds afresh.
    """
    if path.is_file():
        sha = _sha256_file(path)
        expected = KNOWN_TARBALLS.get(path.name)
        if expected is not None and sha != expected:
            raise FirmwareError(f"{path} has sha256 {sha}, expected {expected} "
                                "(see ../shared/micropython/README.md): fetch it again")
        return f"tarball:{sha}"
    digest = hashlib.sha256()
    for file in _tree_files(path):
        st = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                      .encode())
    return f"tree:{path}:{digest.hexdigest()}"


def cache_key(identity: str, frozen: dict[str, bytes]) -> str:
    """The cache folder name for building `identity` with `frozen` (path -> bytes)."""
    digest = hashlib.sha256()
    for part in (f"tool {TOOL_VERSION}", identity, *PORT_FLAGS, HEAP_H, HEAP_C, USERMOD_MK,
                 TOP_MANIFEST):
        digest.update(part.encode() + b"\0")
    for name in sorted(frozen):
        data = frozen[name]
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:32]


def default_cache() -> Path:
    """${XDG_CACHE_HOME:-~/.cache}/trustfleet/firmware."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "trustfleet" / "firmware"


# --- building ----------------------------------------------------------------

def check_toolchain() -> None:
    """Fail with how to fix it unless make and a C compiler that links 32-bit programs exist."""
    for tool, package in (("make", "make"), ("gcc", "gcc-multilib")):
        if shutil.which(tool) is None:
            raise FirmwareError(f"`{tool}` not found: install it (Debian/Ubuntu: "
                                f"apt-get install {package}), or run `make firmware`")
    with tempfile.TemporaryDirectory(prefix="tf-m32-") as tmp:
        source = Path(tmp) / "t.c"
        source.write_text("int main(void) { return 0; }\n")
        proc = subprocess.run(["gcc", "-m32", str(source), "-o", str(Path(tmp) / "t")],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise FirmwareError("gcc cannot link 32-bit programs (no 32-bit libc): install "
                            "gcc-multilib (Debian/Ubuntu: apt-get install gcc-multilib), "
                            "or run `make firmware`, which does")


def _unpack(source: Path, dest: Path) -> Path:
    """Copy or unpack `source` into `dest`; returns the top of the copied tree."""
    if source.is_dir():
        for file in _tree_files(source):
            target = dest / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
        return dest
    with tarfile.open(source) as tar:
        tar.extractall(dest, filter="data")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    top = tops[0] if len(tops) == 1 and not (dest / "py").is_dir() else dest
    if not (top / "py" / "gc.c").is_file():
        raise FirmwareError(f"{source} does not hold a MicroPython source tree (no py/gc.c)")
    return top


def _make(args: list[str], cwd: Path, log: Path, what: str) -> None:
    started = time.monotonic()
    progress(f"{what} ...")
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}  (in {cwd})\n")
        out.flush()
        # Run from `make firmware`, the outer make's job-server flags would leak in:
        # the build sets its own -j.
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        proc = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise FirmwareError(f"{what} failed (exit {proc.returncode}); last lines of the log:\n"
                            + "\n".join(tail))
    progress(f"{what}: done in {time.monotonic() - started:.0f} s")


def _build(source: Path, frozen: dict[str, bytes], work: Path) -> Path:
    """Build in `work` (ours, empty); returns the binary's path inside it."""
    progress(f"copying the source from {source}")
    tree = _unpack(source, work / "src")
    frozen_dir = work / "frozen"
    for name, data in frozen.items():
        target = frozen_dir / "device" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (frozen_dir / "manifest.py").write_text(TOP_MANIFEST)
    usermod = work / "usermod" / "tfheap"
    usermod.mkdir(parents=True)
    (usermod / "micropython.mk").write_text(USERMOD_MK)
    (usermod / "tf_heap.c").write_text(HEAP_C)
    # -include finds the header in the port's folder, make's working directory.
    (tree / "ports" / "unix" / "tf_heap.h").write_text(HEAP_H)
    # The manifest tool checks that micropython-lib is present even when
    # nothing is required from it; an empty stand-in with a README passes.
    empty_lib = work / "no-micropython-lib"
    empty_lib.mkdir()
    (empty_lib / "README.md").write_text("No micropython-lib: the stand-in requires none.\n")
    log = work / "build.log"
    _make(["make", "-C", "mpy-cross", f"-j{JOBS}"], tree, log, "building mpy-cross")
    _make(["make", "-C", "ports/unix", f"-j{JOBS}", *PORT_FLAGS, "BUILD=build-tf",
           f"PROG={BINARY_NAME}", f"MPY_LIB_DIR={empty_lib}",
           f"FROZEN_MANIFEST={frozen_dir / 'manifest.py'}",
           f"USER_C_MODULES={work / 'usermod'}"],
          tree, log, "building the 32-bit unix port (about 35 s on 2 cores)")
    binary = tree / "ports" / "unix" / "build-tf" / BINARY_NAME
    if not binary.is_file():
        raise FirmwareError(f"the build finished but {binary} is missing; see {log}")
    return binary


def locate(src: str | None, cache: str | None) -> tuple[Path, Path, str, dict[str, bytes]]:
    """(source, cache folder for this key, key, frozen files) for the given options."""
    source = resolve_source(src)
    frozen = frozen_files()
    key = cache_key(source_identity(source), frozen)
    base = Path(cache).expanduser().resolve() if cache else default_cache()
    return source, base / key, key, frozen


def build(src: str | None = None, cache: str | None = None) -> tuple[Path, bool]:
    """The binary for these inputs, built unless cached; returns (path, whether it was built now)."""
    source, target, key, frozen = locate(src, cache)
    binary = target / BINARY_NAME
    if binary.is_file():
        return binary, False
    base = target.parent
    if any(c.isspace() for c in str(base)):
        raise FirmwareError(f"the cache path {base} contains white space, which make cannot "
                            "handle: pass --cache DIR")
    base.mkdir(parents=True, exist_ok=True)
    with (base / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():  # another process built it while we waited
            return binary, False
        check_toolchain()
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"{key}.build-", dir=base))
        try:
            built = _build(source, frozen, work)
            staging = Path(tempfile.mkdtemp(prefix=f"{key}.new-", dir=base))
            shutil.copy2(built, staging / BINARY_NAME)
            (staging / "build.json").write_text(json.dumps({
                "source": str(source), "key": key, "tool_version": TOOL_VERSION,
                "flags": list(PORT_FLAGS), "initial_area": INITIAL_AREA,
                "frozen": sorted(frozen), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                     time.gmtime()),
            }, indent=2) + "\n")
            staging.chmod(0o755)  # mkdtemp made it private; the binary is for every user
            staging.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        progress(f"built {binary} in {time.monotonic() - started:.0f} s")
    return binary, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "path"))
    parser.add_argument("--src", help=f"MicroPython source tree or tarball (default: ${SRC_ENV}, "
                        f"else {DEFAULT_TARBALL})")
    parser.add_argument("--cache", help=f"cache folder (default: {default_cache()})")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            binary, fresh = build(args.src, args.cache)
            key = binary.parent.name
        else:
            _source, target, key, _frozen = locate(args.src, args.cache)
            binary, fresh = target / BINARY_NAME, False
            if not binary.is_file():
                print(f"firmware: not built for these inputs (key {key}): run "
                      "`python tools/firmware.py build`", file=sys.stderr)
                return 1
    except FirmwareError as exc:
        print(f"firmware: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"path": str(binary), "key": key, "built_now": fresh,
                          "initial_area": INITIAL_AREA}))
    else:
        print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
