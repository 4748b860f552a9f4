// Runs the real MicroPython VM (WebAssembly build) and serves requests as
// JSON lines on stdin/stdout. Driven by tests/support/mpyvm/__init__.py.
//
// Usage:
//   node runner.mjs --package <host dir> [--package <dir> ...] [--heap <bytes|256k|1m>]
//
// Each --package directory is copied (recursively, .py files only) to
// /lib/<basename> inside the VM, at start and again on every reset.
// The heap size comes from --heap, else $MPYVM_HEAP, else 256 KiB. It sets only
// the first GC arena: this port grows its heap on demand.
//
// Protocol: one JSON object per line each way. On start the runner prints
//   {"id": 0, "ok": true, "ready": true, ...}   (or ok:false with "error", then exits 1)
// then answers each request with the same "id":
//   {"id", "op": "run",  "code"}                -> {"ok", "stdout", "stderr",
//                                                   ["error", "type", "python", "reloaded"]}
//     "python": true when the code raised (error = MicroPython traceback);
//     otherwise the VM failed in JS/wasm and was reloaded ("reloaded": true).
//   {"id", "op": "write", "path", "data_b64"}   -> {"ok"}      (parent dirs are created)
//   {"id", "op": "read", "path"}                -> {"ok", "data_b64"}
//   {"id", "op": "load_host", "host_path", "vm_path"} -> {"ok", "files", "bytes"}
//   {"id", "op": "reset"}                       -> {"ok"}      (fresh VM, packages re-copied)
//   {"id", "op": "ping"}                        -> {"ok"}
// Every response carries "elapsed_ms". Each "run" is one runPython() call.
// Nothing but protocol lines is ever written to stdout: console output goes
// to stderr. The runner exits 0 when stdin closes.

import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const DEFAULT_HEAP = 256 * 1024;
const VM_LIB = "/lib";

// Keep stdout for the protocol only.
for (const name of ["log", "info", "debug", "warn"]) {
  console[name] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

function parseSize(text) {
  const m = /^\s*(\d+)\s*([kKmM]?)\s*$/.exec(String(text));
  if (!m) throw new Error(`bad heap size: ${text}`);
  const mult = { "": 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
  return parseInt(m[1], 10) * mult;
}

function parseArgs(argv) {
  const opts = { packages: [], heap: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "--package") opts.packages.push(path.resolve(next()));
    else if (arg === "--heap") opts.heap = parseSize(next());
    else throw new Error(`unknown argument: ${arg}`);
  }
  if (opts.heap === null) {
    opts.heap = process.env.MPYVM_HEAP ? parseSize(process.env.MPYVM_HEAP) : DEFAULT_HEAP;
  }
  return opts;
}

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Emscripten errno numbers (not Linux ones) for the cases callers care about.
const ERRNO_NAMES = { 2: "EACCES", 20: "EEXIST", 31: "EISDIR", 44: "ENOENT", 54: "ENOTDIR" };

function describe(err) {
  if (err && err.name === "PythonError") {
    return { error: err.message, type: err.type, python: true };
  }
  if (err && err.name === "ErrnoError") {
    const name = ERRNO_NAMES[err.errno] || `errno ${err.errno}`;
    return { error: `VM filesystem error ${name}`, type: "ErrnoError", errno_name: name };
  }
  if (err && err.code && err.syscall) {
    // Host (Node fs) error, e.g. load_host of a missing file.
    return { error: err.message, type: "HostError", errno_name: err.code };
  }
  const text = err && err.stack ? err.stack : String(err);
  return { error: text, type: (err && err.name) || "Error" };
}

class VM {
  constructor(heap, packages) {
    this.heap = heap;
    this.packages = packages;
    this.mp = null;
    this.out = [];
    this.err = [];
  }

  async load() {
    this.mp = null;
    this.mp = await loadMicroPython({
      heapsize: this.heap,
      linebuffer: false,
      stdout: (bytes) => this._collect(this.out, bytes),
      stderr: (bytes) => this._collect(this.err, bytes),
    });
    let files = 0;
    for (const pkg of this.packages) {
      files += this.copyTree(pkg, path.posix.join(VM_LIB, path.basename(pkg)), true).files;
    }
    return files;
  }

  _collect(sink, bytes) {
    for (const b of bytes) sink.push(b);
  }

  takeOutput() {
    const dec = (arr) => Buffer.from(arr).toString("utf8");
    const result = { stdout: dec(this.out), stderr: dec(this.err) };
    this.out = [];
    this.err = [];
    return result;
  }

  mkdirs(vmDir) {
    if (vmDir && vmDir !== "/") this.mp.FS.mkdirTree(vmDir);
  }

  writeFile(vmPath, data) {
    this.mkdirs(path.posix.dirname(vmPath));
    this.mp.FS.writeFile(vmPath, data);
  }

  // Copy a host file or directory tree into the VM; returns {files, bytes}.
  copyTree(hostPath, vmPath, pyOnly) {
    let files = 0;
    let bytes = 0;
    const walk = (h, v) => {
      const st = fs.statSync(h);
      if (st.isDirectory()) {
        this.mkdirs(v);
        for (const name of fs.readdirSync(h).sort()) {
          if (name === "__pycache__") continue;
          walk(path.join(h, name), path.posix.join(v, name));
        }
      } else if (st.isFile() && (!pyOnly || h.endsWith(".py"))) {
        this.writeFile(v, fs.readFileSync(h));
        files += 1;
        bytes += st.size;
      }
    };
    walk(hostPath, vmPath);
    return { files, bytes };
  }

  run(code) {
    this.takeOutput();
    try {
      this.mp.runPython(code);
      return { ok: true, ...this.takeOutput() };
    } catch (err) {
      return { ok: false, ...describe(err), ...this.takeOutput() };
    }
  }

  // After a failure outside Python (e.g. a wasm trap) the VM's C state is
  // suspect: replace it and say so.
  async runOrReload(code) {
    const resp = this.run(code);
    if (!resp.ok && !resp.python) {
      await this.load();
      resp.error += "\n(the VM failed outside Python and was reloaded: state lost)";
      resp.reloaded = true;
    }
    return resp;
  }
}

async function handle(vm, req) {
  switch (req.op) {
    case "run":
      if (typeof req.code !== "string") throw new Error("run needs a string 'code'");
      return await vm.runOrReload(req.code);
    case "write":
      vm.writeFile(req.path, Buffer.from(req.data_b64 || "", "base64"));
      return { ok: true };
    case "read":
      return { ok: true, data_b64: Buffer.from(vm.mp.FS.readFile(req.path)).toString("base64") };
    case "load_host": {
      const { files, bytes } = vm.copyTree(path.resolve(req.host_path), req.vm_path, false);
      return { ok: true, files, bytes };
    }
    case "reset":
      return { ok: true, files: await vm.load() };
    case "ping":
      return { ok: true };
    default:
      throw new Error(`unknown op: ${req.op}`);
  }
}

async function main() {
  let vm;
  const t0 = performance.now();
  try {
    const opts = parseArgs(process.argv.slice(2));
    vm = new VM(opts.heap, opts.packages);
    const files = await vm.load();
    send({
      id: 0, ok: true, ready: true, heap: opts.heap, files,
      packages: opts.packages, node: process.version,
      elapsed_ms: performance.now() - t0,
    });
  } catch (err) {
    send({ id: 0, ok: false, ready: false, ...describe(err) });
    process.exitCode = 1;
    return;
  }

  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let req;
    try {
      req = JSON.parse(line);
    } catch (err) {
      send({ id: null, ok: false, type: "ProtocolError", error: `bad JSON: ${err.message}` });
      continue;
    }
    const t = performance.now();
    let resp;
    try {
      resp = await handle(vm, req);
    } catch (err) {
      resp = { ok: false, ...describe(err) };
      const where = req.path || req.host_path;
      if (where) resp.error = `${req.op} ${where}: ${resp.error}`;
      if (req.op === "reset" || !vm.mp) resp.error = `VM reload failed: ${resp.error}`;
    }
    send({ id: req.id ?? null, op: req.op, ...resp, elapsed_ms: performance.now() - t });
  }
}

process.on("uncaughtException", (err) => {
  process.stderr.write(`runner: uncaught ${err && err.stack ? err.stack : err}\n`);
  process.exit(70);
});

await main();
