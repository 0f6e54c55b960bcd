/**
 * The receiving side of a session (the remote `escp --server` on push, the
 * local escp on pull). Here a file's fate is decided: each entry the sender
 * announces is checked (plan/target.ts) and given a temporary name beside its
 * target, which the stream worker receiving its first block creates (or this
 * thread, for a file that gets no block; a file of one block is created without
 * a name); workers write its blocks; when the sender's DONE and all its bytes
 * are in, the digest of what was written is compared with the digest of what
 * was read, and only a match is renamed over the target (or linked in under
 * it). Anything else removes the temporary file and names the cause in RESULT.
 * --inplace writes the target itself instead.
 */
import fs from "node:fs";
import { native, cstr, ptr, nativeError, codeText, Rec, E, FD_CLAIMED, DIRECT_MIN, MODE_KEEP, COMMIT_TIMES, COMMIT_UNNAMED, COMMIT_REPLACES, COMMIT_OLD_MODE, INPLACE_OURS, STAT_SLOTS, statTimeNs, timesOf } from "../native.ts";
import {
  decodeFiles, decodeVerdicts, encodeResume, ProtocolError, RESUME_CHUNK, STATUS_SKIPPED, LEFT_INCOMPLETE,
  type FileEntry, type FileVerdict, type SessionOptions,
} from "../protocol.ts";
import { PathError, type Target } from "../plan/target.ts";
import type { Request } from "../plan/request.ts";
import { printable } from "../text.ts";
import { FileDigest, sameDigest } from "./digest.ts";
import { VerdictBatch } from "./verdicts.ts";
import { DirHandles, dirHandles } from "./dirs.ts";
import { TABLE_CAP, type StreamPool, type BlockDone } from "../streams/pool.ts";
import type { Events, TransferStats } from "../report.ts";
import { log } from "../log.ts";
import { dfgOnly } from "../jit.ts";
import { encodeName, nameBytes, prefixOfBytes } from "../names.ts";
import { Collector } from "../heap.ts";
import { slice } from "./slices.ts";
import { nextDataBlock } from "./holes.ts";

/** preserve, direct, verify, resume (skip identical files, continue partial ones, keep them on failure), sparse, inplace. */
export type ReceiverOptions = Pick<SessionOptions, "preserve" | "direct" | "verify" | "resume" | "sparse" | "inplace" | "fileWindow"> & {
  blockSize: number;
  /** A pull's operands: what the remote sender may announce (plan/request.ts). */
  request?: Request;
};

interface RecvFile {
  entry: FileEntry;
  /** Path under the destination root (for messages), its directory, and the name in it. */
  rel: string;
  dir: string;
  name: string;
  /** The temporary name in `dir`; empty for a rejected entry or a device/FIFO written in place. */
  tmp: string;
  /** name and tmp as C strings, set whenever tmp is (tmpC's address is in the fd table while a worker is to create the file). */
  nameC?: Buffer;
  tmpC?: Buffer;
  /** A stream worker creates the file; claim() takes its fd back. */
  workerCreates?: boolean;
  /** The worker created it without a name (O_TMPFILE): tmp is not ours, commit links it. */
  unnamed?: boolean;
  /** -1 until claimed back from the worker that created the file (then -errno if it could not). */
  fd: number;
  processed: bigint;
  digest: FileDigest;
  verdict?: FileVerdict;
  error?: string;
  /** What commit sets: the final mode, or MODE_KEEP when the file was created with it. */
  mode: number;
  /** --resume: what we already held when the file was announced. */
  kept?: Kept;
  /** The target is a device or FIFO, written in place (no temporary name). */
  special?: boolean;
  /** A regular file is at the target name: commit gives ours its owner, group and attributes. */
  replaces?: boolean;
  /** Failed while its data still came (the disk refused it): reported and answered then, dropped at its end. */
  answered?: boolean;
  /** Read back before commit: --verify, or a directory on FUSE (fusefat lost blocks and said nothing). */
  readBack?: boolean;
  /** Written in place: the target itself (--inplace, or a file mounted over). */
  inplace?: boolean;
  /** Written in place, the target was made, or had blocks zeroed: a failure leaves it incomplete even before any block. */
  emptied?: boolean;
  /** Per block of the file: 1 once DATA replaced it (--resume: the rest are kept blocks; --inplace --sparse: zeroed at the end). */
  received?: Uint8Array;
  /** Why the target may not be replaced, when --resume offers its blocks before any temporary file is made: the file fails unless kept whole. */
  refused?: string;
}

/** What check() found: why the file fails (if it does), its digest, and the bytes its blocks cover. */
interface Checked {
  cause: string | undefined;
  digest: Uint8Array;
  covered: bigint;
}

/** Blocks held before the transfer (a partial file, or the old target: of any size, cut short by an scp or cp that was stopped, or longer). */
interface Kept {
  hashes: Uint8Array; // 16 per block, blocks 0..n-1
  n: number;
  /** Where the kept bytes are: the temporary file itself, or the old target (copied at the end). */
  fromTarget: boolean;
  /** The old target had the source's size: found whole, it may stay as the file (keepTarget). */
  sameSize?: boolean;
  /** The old target as its blocks were hashed (fileIdentity): they are used only from that file, unchanged. */
  target?: string;
  /** All of them were in the old target, which stays as the file (keepTarget). */
  whole?: boolean;
}

const { O_WRONLY, O_RDONLY, O_NONBLOCK } = fs.constants;
/** Files announced and not yet settled that a receiver accepts (the sender's window is 512). */
const MAX_OPEN_FILES = TABLE_CAP / 2;
const DIRECT_MIN_N = BigInt(DIRECT_MIN);
/** What a failure of a file on FUSE that several streams wrote adds (fusefat lost such writes and said nothing). */
const ON_FUSE = " (on FUSE, where the writes of several streams can be lost or refused: copy into it with -t 1)";
/** Where replacing a file takes what its directory will not give. */
const RENAME_HINT = "(escp renames a new file over the old; --inplace writes into the old one)";

export class Receiver {
  private readonly files = new Map<bigint, RecvFile>();
  private readonly gc = new Collector();
  private readonly madeDirs: { rel: string; entry: FileEntry }[] = [];
  private highestId = -1n;
  /** Top directories announced as `dir/.`: their contents merge into the target directory. */
  private readonly mergeTops = new Set<string>();
  private senderEnded = false;
  private ended!: () => void;
  /** Resolves on the sender's END or a fatal error, whichever comes first. */
  private readonly over = new Promise<void>((r) => (this.ended = r));
  private died!: () => void;
  private readonly dead = new Promise<void>((r) => (this.died = r));
  private fatal: Error | undefined;
  private readonly lib = native();
  private readonly results: VerdictBatch;
  private readonly umask = process.umask();
  /** Root keeps setuid bits when it writes a file (CAP_FSETID); anyone else's writes clear them. */
  private readonly privileged = process.geteuid?.() === 0;
  private readonly dirs: DirHandles;
  /** escp_dir_replaceable of each directory where a file was replaced, asked once. */
  private readonly dirRights = new Map<string, number>();
  /**
   * Per directory: null where names keep their case; where they do not (FAT, exFAT,
   * escp_dir_ignores_case), the names given there so far by their folded form.
   */
  private readonly caseless = new Map<string, Map<string, string> | null>();
  /** Per directory: whether it is on FUSE (escp_on_fuse), where files are written in order and read back. */
  private readonly fuseDirs = new Map<string, boolean>();
  /** dir/name of files being copied whose names look like our temporary names: ours take other names. */
  private readonly partNames = new Set<string>();
  /** Directories this session made: nothing can be at a name in them unless we put it there. */
  private readonly freshDirs = new Set<string>();
  private readonly oneBlock: bigint;
  /** Whole-file work (--resume's offers and kept blocks, --verify's read-back), one file at a time, in slices. */
  private slow: Promise<void> = Promise.resolve();
  /** cleanup() ran: slow work stops and touches nothing. */
  private closed = false;
  readonly stats: TransferStats = { files: 0, bytes: 0, skippedBytes: 0, failures: 0 };

  constructor(
    private readonly pool: StreamPool,
    private readonly target: Target,
    private readonly opts: ReceiverOptions,
    private readonly events: Events,
  ) {
    this.results = new VerdictBatch(pool, Rec.RESULT);
    this.dirs = new DirHandles(target.rootFd, dirHandles(opts.fileWindow ?? 64));
    this.oneBlock = BigInt(opts.blockSize);
    pool.onRecord = (type, flags, body) => this.record(type, flags, body);
    pool.onDone = (blocks) => this.blocksDone(blocks);
    pool.onNeed = (id) => this.need(id);
    pool.onFatal = (e) => this.die(e);
  }

  /** Resolves when the sender has ended the session and every file is settled. */
  async run(): Promise<void> {
    await this.over;
    if (this.fatal) throw this.fatal;
    // The data streams end with their END records, or not at all if the session dies first.
    await Promise.race([this.pool.allEnded(), this.dead]);
    if (this.fatal) throw this.fatal;
    // Refused ones, their blocks dropped; a file failed early is settled by its last block.
    for (const f of this.files.values()) {
      if (f.answered) throw new Error(`internal error: ${f.rel} failed and was not cleaned up`);
      f.digest.discard();
    }
    this.files.clear();
    this.finishDirs();
    this.dirs.close();
    this.pool.sendControl(Rec.END, null);
  }

  /** Removes temporary files of unfinished transfers (on a fatal error or interrupt); --resume keeps them. */
  cleanup(): void {
    this.closed = true;
    for (const f of this.files.values()) {
      this.claim(f); // no worker creates it after this
      this.pool.unpublish(f.entry.id);
      this.dropPart(f);
    }
    this.files.clear();
    this.dirs.close();
  }

  private record(type: number, flags: number, body: Uint8Array): void {
    try {
      if (type === Rec.FILES) {
        const raw = flags & 1 ? decompress(body) : body;
        for (const e of decodeFiles(raw)) this.announce(e);
        this.pool.published();
      } else if (type === Rec.DONE) {
        for (const v of decodeVerdicts(body)) {
          const f = this.files.get(v.id);
          if (!f || f.verdict) throw new ProtocolError(`DONE for unknown file id ${v.id}`);
          f.verdict = v;
          this.maybeFinish(f);
        }
      } else if (type === Rec.END) {
        // A refused file's last blocks may still be on their way (the data streams end after them).
        const unfinished = [...this.files.values()].filter((f) => (f.tmp || f.special) && !f.answered).length;
        if (unfinished) throw new ProtocolError(`sender ended the session with ${unfinished} file(s) unfinished`);
        this.senderEnded = true;
        this.ended();
      } else if (type === Rec.ERROR) {
        throw new Error(new TextDecoder().decode(body));
      } else {
        throw new ProtocolError(`unexpected record type ${type} on stream 0`);
      }
      this.results.flush();
    } catch (e) {
      this.die(e as Error);
    }
  }

  private announce(e: FileEntry): void {
    this.gc.tick();
    if (e.id <= this.highestId) throw new ProtocolError(`file id ${e.id} announced out of order`);
    // An honest sender keeps 512 files open at most; more would exhaust descriptors
    // and make ids share slots of the workers' file table.
    if (this.files.size >= MAX_OPEN_FILES) throw new ProtocolError(`sender announced more than ${MAX_OPEN_FILES} files without finishing them`);
    this.highestId = e.id;
    let rel: string;
    try {
      rel = this.target.place(e.path, e.merge || (this.mergeTops.size > 0 && this.mergeTops.has(e.path.split("/", 1)[0])));
    } catch (err) {
      // Shown as sent, not normalised: "dst/../x" must not read like a path outside.
      if (err instanceof PathError) return this.reject(e, e.path, `refused: ${err.message}`, `${this.target.root}/${e.path}`);
      throw err;
    }
    // A safe name that was not asked for: the remote is not what it claims, and the session ends.
    const unasked = this.opts.request?.refuses(e);
    if (unasked) throw new ProtocolError(`${printable(e.path)} ${unasked}`);
    if (e.merge) this.mergeTops.add(e.path);
    if (e.kind === "dir") return this.makeDir(e, rel);
    if (this.target.newDir && !e.path.includes("/")) return this.reject(e, rel, "No such file or directory", this.target.newDir);
    const slash = rel.lastIndexOf("/");
    const dir = slash < 0 ? "" : rel.slice(0, slash), name = rel.slice(slash + 1);
    const dfd = this.dirs.get(dir);
    if (dfd < 0) return this.reject(e, rel, openFailure(dfd));
    // "A" then "a", on FAT: the second would replace the first, or meet its temporary file.
    const twin = this.caseTwin(dir, dfd, name);
    if (twin) return this.reject(e, rel, `this filesystem ignores case, and ${twin}, copied before it, has the same name here: not copied`);
    // What is there now decides skipping (--resume), the mode of an overwritten file (no -p),
    // and whether the target is a device or FIFO (written into, never replaced: escp host:f /dev/null).
    const nameC = cstr(name);
    if (name.endsWith(PART_SUFFIX)) this.partNames.add(`${dir}/${name}`);
    const existing = this.freshDirs.has(dir) ? undefined : statAt(dfd, nameC);
    // --inplace: the target itself is the file written ("renamed" onto itself at commit);
    // so is a file mounted over (a bind mount, as containers have), which no rename replaces.
    const inplace = this.opts.inplace || (existing?.kind === "file" && this.lib.escp_is_mount_root(dfd, nameC) === 1);
    let tmp = inplace ? name : partBase(name), tmpC = inplace ? nameC : cstr(tmp);
    if (existing?.kind === "special") return this.intoSpecial(e, rel, dfd, name);
    // Blocks are written at their offsets, which a FIFO cannot take; and opening one with
    // no reader would block this thread, deaf to signals, until one came.
    if (existing?.kind === "fifo") return this.reject(e, rel, "Illegal seek (a FIFO: escp writes files at offsets; name a file)");
    if (existing?.kind === "dir") return this.reject(e, rel, "Is a directory"); // before any data, not at the rename
    // Same size and time; or both empty, whose content cannot differ (without -p, whose times would).
    const same = existing?.kind === "file" && existing.size === e.size &&
      ((existing.mtimeNs === e.mtimeNs && !this.opts.verify) || (e.size === 0n && !this.opts.preserve));
    if (this.opts.resume && same) {
      // A partial file a killed run left beside it has nothing left to give.
      if (!inplace) this.lib.escp_clear_stale_part(dfd, tmpC);
      return this.skip(e, rel);
    }
    // --resume over a target of the source's size offers its blocks first: one found
    // whole is kept, not replaced, so what would refuse replacing it waits until then.
    // On FUSE, blocks kept from the target would be copied in after those that came, out of
    // order: only a partial file's blocks (its beginning) are offered there.
    const fuse = this.onFuse(dir, dfd);
    // A target of another size (an scp or cp stopped partway, or a source that was cut) is
    // offered too, once a temporary file is made: its matching blocks are copied, not sent.
    const fromTarget = !fuse && existing?.kind === "file" && existing.size > 0n;
    const offerFirst = this.opts.resume && !this.opts.sparse && !inplace && fromTarget && existing.size === e.size;
    const refused = existing?.kind === "file" && !inplace ? this.mayReplace(dir, dfd, nameC) : undefined;
    if (refused && !offerFirst) return this.reject(e, rel, refused);
    // A file of one block has no partial copy worth keeping for --resume: a worker writes
    // it unnamed where the filesystem allows, so that it needs no temporary name in the
    // directory (one directory update less per file) and a killed run leaves nothing.
    // --verify reads the written file back by name, before commit.
    const readBack = this.opts.verify || fuse;
    const unnamed = !readBack && !this.opts.sparse && e.size > 0n && e.size <= this.oneBlock;
    if (inplace) {
      // A killed run's partial file would stay beside the target written in place.
      if (!this.freshDirs.has(dir)) this.lib.escp_clear_stale_part(dfd, cstr(partBase(name)));
    } else {
      // What sits at the temporary name, before any data travels: a killed run's partial
      // file goes; another escp writing this target now holds its own locked, and the
      // file is refused here, not at its end (--resume locks the one it opens below);
      // anything else there stays, and ours takes another name: another user's file, or
      // a file of that very name this copy brings (now or copied a moment ago). A file
      // written unnamed needs the name only for an instant at commit, which sees to that.
      const held = this.partNames.size > 0 && this.partNames.has(`${dir}/${tmp}`) ? E.KEPT
        : !this.opts.resume && !this.freshDirs.has(dir) && !unnamed ? this.lib.escp_clear_stale_part(dfd, tmpC) : 0;
      if (held === E.KEPT) tmpC = cstr((tmp = otherPart(name)));
      else if (held < 0) return this.reject(e, rel, codeText(held));
    }
    const mode = this.finalMode(e, existing);
    const replaces = existing?.kind === "file" && !inplace;
    // Replacing without -p, the mode is the old file's, taken at commit with its owner
    // (COMMIT_OLD_MODE): this one is for a name that is empty by then.
    const lastMode = replaces && !this.opts.preserve ? this.finalMode(e, undefined) : mode;
    // Created with its final mode when the umask makes it exactly that (the usual 0644,
    // 0755), so that commit needs no fchmod; never group or world writable unverified.
    // Writable by its owner until commit whatever its mode: the O_DIRECT path reopens
    // the file to write an unaligned last block, and a 0444 file would refuse that.
    const createMode = (mode & 0o755 || 0o600) | 0o200;
    const commitMode = (createMode & ~this.umask) === lastMode ? MODE_KEEP : lastMode;
    const direct = this.opts.direct && !this.opts.resume && e.size >= DIRECT_MIN_N;
    // A file with data is created by the stream worker that receives its first block
    // (escp_fdslot), so that the creates of many small files run on the workers, not
    // here. --resume must first look at what is there, with --sparse a file may get no
    // block at all, an empty file gets none, and --inplace opens the target: those are
    // created here.
    if (!this.opts.resume && !this.opts.sparse && !inplace && e.size > 0n && this.dirs.pin(dir)) {
      this.start({ entry: e, rel, dir, name, tmp, nameC, tmpC, workerCreates: true, fd: -1, processed: 0n, digest: new FileDigest(), mode: commitMode, replaces, readBack });
      this.pool.publishCreate(e.id, e.size, dfd, tmpC, direct, createMode, unnamed);
      return;
    }
    // --resume over a target offered first with no partial file beside it: the temporary
    // file is made by the worker that receives the first block the target lacks, if one
    // comes, so that a target found whole is kept without a write to its directory (a
    // read-only one; a --verify that finds nothing to change made and removed a temporary
    // file, touching the directory).
    const lazy = offerFirst && !statAt(dfd, tmpC) && this.dirs.pin(dir);
    if (refused && !lazy) return this.reject(e, rel, refused);
    if (lazy) {
      const f: RecvFile = { entry: e, rel, dir, name, tmp, nameC, tmpC, workerCreates: true, fd: -1, processed: 0n, digest: new FileDigest(), mode: lastMode, replaces, refused, readBack, received: this.blockMap(e) };
      this.start(f);
      this.later(() => this.offer(f, true));
      this.pool.publishCreate(e.id, e.size, dfd, tmpC, false, 0);
      return;
    }
    // Whatever sits at the temporary name, a symbolic link is never followed; without
    // --resume a stale partial file (from a killed run) is replaced (escp_create_part).
    // --inplace writes through a link as scp does, but never out of the destination (openat2
    // beneath it), and locks the target as a temporary file is locked; what the target held
    // beyond the new size goes at commit (sized). With --sparse the holes, never sent, would
    // keep its old bytes: they are zeroed at the end (zeroUnwritten), not emptied up front,
    // since the target may be the very file the sender reads (escp --inplace --sparse f localhost:f).
    const isDirect = new Int32Array(1);
    let fd = inplace
      ? this.openInPlace(dfd, nameC, createMode, direct, isDirect)
      : this.opts.resume
        ? this.lib.escp_open_resume_part(dfd, tmpC)
        : this.lib.escp_create_part(dfd, tmpC, direct ? 1 : 0, createMode, ptr(isDirect));
    if (fd === E.KEPT) {
      // Another user's partial file (--resume does not continue it), or one put there since the look above.
      tmpC = cstr((tmp = otherPart(name)));
      fd = this.lib.escp_create_part(dfd, tmpC, direct ? 1 : 0, createMode, ptr(isDirect));
    }
    const tmpShown = `${dir ? `${dir}/` : ""}${tmp}`;
    if (fd === E.NOTOURS) return this.reject(e, rel, `${tmpShown} is another user's file, or has other links; remove it to resume`);
    if (fd < 0) return this.reject(e, rel, openFailure(fd));
    if (this.opts.resume && typeOf(fd) !== S_IFREG) {
      this.lib.escp_close(fd);
      return this.reject(e, rel, `${tmpShown} is not a regular file; remove it to resume`);
    }
    // Opened, not made, by --resume (0600) and --inplace (an existing target keeps its mode): commit sets it.
    const emptied = inplace && existing?.kind !== "file";
    const received = this.opts.resume || (inplace && this.opts.sparse) ? this.blockMap(e) : undefined;
    const f: RecvFile = { entry: e, rel, dir, name, tmp, nameC, tmpC, fd, processed: 0n, digest: new FileDigest(), mode: this.opts.resume || inplace ? lastMode : commitMode, replaces, inplace, emptied, readBack, received };
    this.start(f);
    // The sender sends none of this file's blocks before our offer's last RESUME.
    if (this.opts.resume) this.later(() => this.offer(f, fromTarget));
    this.pool.publish(e.id, e.size, fd, isDirect[0] === 1);
  }

  /**
   * The target, opened to be written in place and locked (escp_open_inplace). One this
   * copy writes in place already, under a name that is a hard link of it (a tree of
   * links copied --inplace), is not another escp's: it is opened as it is, under the
   * lock held through that name.
   */
  private openInPlace(dfd: number, nameC: Buffer, mode: number, direct: boolean, isDirect: Int32Array): number {
    const fd = this.lib.escp_open_inplace(dfd, nameC, 0, mode, direct ? 1 : 0, ptr(isDirect));
    if (fd !== E.INPLACE_BUSY || !this.writingInPlace(dfd, nameC)) return fd;
    return this.lib.escp_open_inplace(dfd, nameC, INPLACE_OURS, mode, direct ? 1 : 0, ptr(isDirect));
  }

  /** Whether `name` in dfd is a file this receiver has open, written in place (device and inode). */
  private writingInPlace(dfd: number, nameC: Buffer): boolean {
    const at = new BigInt64Array(STAT_SLOTS), open = new BigInt64Array(STAT_SLOTS);
    if (this.lib.escp_fstatat(dfd, nameC, ptr(at)) < 0) return false;
    for (const f of this.files.values()) {
      if (f.inplace && f.fd >= 0 && this.lib.escp_fstat(f.fd, ptr(open)) === 0 && open[3] === at[3] && open[4] === at[4]) return true;
    }
    return false;
  }

  /** One byte per block of the file, for RecvFile.received. */
  private blockMap(e: FileEntry): Uint8Array {
    return new Uint8Array(Number((e.size + this.oneBlock - 1n) / this.oneBlock));
  }

  private start(f: RecvFile): void {
    this.files.set(f.entry.id, f);
    this.events.started(this.target.show(f.rel), Number(f.entry.size));
    if (log.enabled("debug")) log.debug("file start", { file: f.entry.id, path: this.target.show(f.rel), size: f.entry.size, tmp: f.tmp });
  }

  /** Takes back a file a worker was to create: its fd, or why there is none (f.fd < 0). */
  private claim(f: RecvFile): void {
    if (!f.workerCreates) return;
    f.fd = this.pool.claimFd(f.entry.id);
    f.unnamed = f.fd >= 0 && this.pool.createdUnnamed(f.entry.id);
    f.workerCreates = false;
    this.dirs.unpin(f.dir);
  }

  /**
   * A device or FIFO under the target name is opened and written as it is, as scp
   * does, never replaced by a renamed file; the digest is still checked.
   */
  private intoSpecial(e: FileEntry, rel: string, dfd: number, name: string): void {
    const fd = this.lib.escp_openat_beneath(dfd, cstr(name), O_WRONLY, 0, 0, null);
    if (fd < 0) return this.reject(e, rel, openFailure(fd));
    if (this.opts.sparse && typeOf(fd) === S_IFBLK) {
      this.lib.escp_close(fd);
      return this.reject(e, rel, "--sparse does not send the source's holes, where a device would keep its old data: copy it without --sparse");
    }
    this.files.set(e.id, { entry: e, rel, dir: "", name, tmp: "", fd, processed: 0n, digest: new FileDigest(), mode: 0, special: true });
    this.events.started(this.target.show(rel), Number(e.size));
    this.pool.publish(e.id, e.size, fd, false);
  }

  /** --resume: a complete, identical file (same size and mtime) is left as it is. */
  private skip(e: FileEntry, rel: string): void {
    this.stats.files++;
    this.stats.bytes += Number(e.size);
    this.stats.skippedBytes += Number(e.size);
    this.events.finished(this.target.show(rel), Number(e.size));
    log.debug("file done: already here, same size and time", { file: e.id, path: this.target.show(rel) });
    this.results.add({ id: e.id, status: STATUS_SKIPPED, bytes: e.size, digest: new Uint8Array(16), message: "" });
  }

  /**
   * --resume: tells the sender the digests of the blocks we hold, from the partial
   * file (its whole blocks), or else from the old target (a last block shorter than
   * the source's cannot match it: the sender hashes its own length).
   */
  private async offer(f: RecvFile, targetUsable: boolean): Promise<void> {
    const bs = BigInt(this.opts.blockSize);
    const partSize = BigInt(fstatSize(f.fd));
    // A target it cannot read (mode 0200) offers nothing: everything is sent.
    const old = partSize === 0n && targetUsable ? this.openTarget(f) : undefined;
    const fromTarget = old?.st !== undefined;
    const have = old?.st ? old.st.size : partSize;
    const held = have < f.entry.size ? have : f.entry.size;
    const n = Number(fromTarget ? (held + bs - 1n) / bs : held / bs);
    const hashes = new Uint8Array(n * 16);
    let target: string | undefined;
    if (n === 0 && fromTarget) this.lib.escp_close(old!.fd);
    if (n > 0) {
      const rd = fromTarget ? old!.fd : this.lib.escp_reopen_read(f.fd, 0); // ours: not by name (escp_reopen_read)
      if (old?.st) target = fileIdentity(old.st);
      const h = hashes;
      for (let i = 0; i < n && rd >= 0 && !this.closed; i++) {
        const off = BigInt(i) * bs;
        const len = held - off < bs ? held - off : bs;
        if (this.lib.escp_hash_range(rd, off, len, ptr(h.subarray(i * 16))) < 0) h.fill(0, i * 16, i * 16 + 16);
        await slice();
      }
      if (rd >= 0) this.lib.escp_close(rd);
    }
    if (this.closed) return;
    f.kept = { hashes, n, fromTarget, target, sameSize: old?.st?.size === f.entry.size };
    for (let first = 0; first < n || first === 0; first += RESUME_CHUNK) {
      const chunk = hashes.subarray(first * 16, Math.min(n, first + RESUME_CHUNK) * 16);
      this.pool.sendControl(Rec.RESUME, encodeResume({ id: f.entry.id, first, hashes: chunk, last: first + RESUME_CHUNK >= n }));
    }
  }

  private makeDir(e: FileEntry, rel: string): void {
    if (rel === "") {
      // A `dir/.` operand: the target directory itself stands for it.
      if (this.opts.preserve) this.madeDirs.push({ rel: ".", entry: e });
      return;
    }
    // Made writable by us whatever its mode, to be filled; a read-only one (0555, 0500)
    // gets its mode at the end, as with scp, -p or not.
    const r = this.lib.escp_mkdirat_beneath(this.target.rootFd, cstr(rel), (e.mode | 0o700) & 0o7777);
    if (r === -EEXIST) return this.reject(e, rel, "exists and is not a directory");
    if (r < 0) return this.reject(e, rel, openFailure(r));
    if (r === 0) {
      if (this.freshDirs.size >= 4096) this.freshDirs.clear(); // bounded: a lookup more is all it costs
      this.freshDirs.add(rel);
    }
    if (this.opts.preserve || (r === 0 && (e.mode & 0o700) !== 0o700)) this.madeDirs.push({ rel, entry: e });
  }

  /** Whether dir is on FUSE, asked once per directory. */
  private onFuse(dir: string, dfd: number): boolean {
    let fuse = this.fuseDirs.get(dir);
    if (fuse === undefined) {
      if (this.fuseDirs.size >= 4096) this.fuseDirs.clear(); // bounded, as freshDirs
      this.fuseDirs.set(dir, (fuse = this.lib.escp_on_fuse(dfd) === 1));
    }
    return fuse;
  }

  /** The name given before `name` in dir that this directory cannot tell from it, if any. */
  private caseTwin(dir: string, dfd: number, name: string): string | undefined {
    let names = this.caseless.get(dir);
    if (names === undefined) {
      if (this.caseless.size >= 4096) this.caseless.clear(); // bounded, as freshDirs
      this.caseless.set(dir, (names = this.lib.escp_dir_ignores_case(dfd) === 1 ? new Map() : null));
    }
    if (!names) return undefined;
    const folded = name.toLowerCase(), first = names.get(folded);
    if (first === undefined) names.set(folded, name);
    return first !== undefined && first !== name ? this.target.show(dir ? `${dir}/${first}` : first) : undefined;
  }

  /**
   * Why an existing file at the target must not be replaced, or undefined. The
   * rename that replaces it needs only the directory, but scp writes into the file
   * and is refused where the user may not write it (chmod a-w, another user's
   * file): so is this. When only the directory is read-only, --inplace would do.
   */
  private mayReplace(dir: string, dfd: number, nameC: Buffer): string | undefined {
    const file = this.lib.escp_may_write(dfd, nameC);
    if (file < 0) return nativeError(file);
    let rights = this.dirRights.get(dir);
    if (rights === undefined) this.dirRights.set(dir, (rights = this.lib.escp_dir_replaceable(dfd)));
    if (rights < 0) return `${codeText(rights)}: its directory is not writable ${RENAME_HINT}`;
    const sticky = rights === 1 ? this.lib.escp_sticky_denies(dfd, nameC) : 0;
    if (sticky < 0) return `${codeText(sticky)}: its directory is sticky and the file another user's ${RENAME_HINT}`;
    return undefined;
  }

  /** Without -p, a new file gets the source's mode less the umask, and an existing one keeps its mode (as scp does). */
  private finalMode(e: FileEntry, existing: Existing | undefined): number {
    if (this.opts.preserve) return e.mode & 0o7777;
    if (existing?.kind === "file") return this.privileged ? existing.mode : withoutSetId(existing.mode);
    return e.mode & 0o777 & ~this.umask;
  }

  /** An entry that will not be written: the sender hears why, and its data (if any) goes nowhere. */
  private reject(e: FileEntry, rel: string, cause: string, shown = this.target.show(rel)): void {
    this.refuse(e, shown, cause);
    if (e.kind === "file") {
      // Blocks may already be on their way: they are authenticated and dropped, unwritten
      // (FD_CLAIMED: no file, and none to create), without a descriptor to spare.
      const f: RecvFile = { entry: e, rel, dir: "", name: "", tmp: "", fd: -1, processed: 0n, digest: new FileDigest(), error: cause, mode: 0 };
      this.files.set(e.id, f);
      this.pool.publish(e.id, e.size, FD_CLAIMED, false);
    }
  }

  private blocksDone(blocks: BlockDone[]): void {
    for (const b of blocks) {
      const f = this.files.get(b.fileId);
      if (!f) continue;
      f.processed += BigInt(b.len);
      if (f.received) f.received[Number(b.offset / this.oneBlock)] = 1;
      // A block came that a target offered first lacks: it cannot be kept whole, and may not be replaced.
      if ((b.status < 0 || f.refused) && !f.error) this.failEarly(f, f.refused ?? codeText(b.status) + this.fuseHint(f));
      else if (b.status >= 0) f.digest.add(b.offset, b.len, b.hash);
      this.maybeFinish(f);
    }
    this.results.flush();
  }

  /**
   * A block could not be written (no space, quota, file too large, an I/O error): the
   * file fails now, and the sender hears it at once and sends no more of it, instead
   * of streaming the rest (a 1 TiB file into a full disk) for the verdict at its end.
   */
  private failEarly(f: RecvFile, cause: string): void {
    f.error = cause;
    if (f.verdict) return; // the sender has sent all of it already: it hears at the end
    f.answered = true;
    this.refuse(f.entry, this.target.show(f.rel), f.inplace ? cause + this.dropPart(f) : cause);
  }

  /** Reports a file failed before its end and tells the sender, who sends no more of it. */
  private refuse(e: FileEntry, shown: string, cause: string): void {
    this.stats.failures++;
    this.events.failed(shown, cause, e.id);
    this.results.add({ id: e.id, status: -1, bytes: 0n, digest: new Uint8Array(16), message: `${shown}\0${cause}` });
  }

  private maybeFinish(f: RecvFile): void {
    if (!f.verdict || f.processed < f.verdict.bytes) return;
    this.claim(f);
    this.pool.unpublish(f.entry.id);
    if (!f.tmp && !f.special) {
      this.files.delete(f.entry.id);
      f.digest.discard(); // a rejected entry: already reported
      return;
    }
    let shown = this.target.show(f.rel);
    let cause = f.error;
    if (!cause && f.verdict.status !== 0) {
      // The sender failed it (it changed while being read): named as the sender named it.
      const [source, why] = f.verdict.message.includes("\0") ? f.verdict.message.split("\0", 2) : [shown, f.verdict.message];
      shown = source;
      cause = why || codeText(f.verdict.status);
    }
    const verify = !!f.readBack && !f.special;
    // A failed file has nothing to restore or read back: settled now (one failed early
    // must be, before the session's end, which need not wait for it).
    if (cause || (!f.kept && !verify)) return this.settle(f, shown, this.check(f, cause, f.processed));
    this.later(async () => {
      const restored = f.kept && !cause ? await this.restoreKept(f) : 0n;
      if (this.closed) return;
      const checked = typeof restored === "string" ? this.check(f, restored, f.processed) : this.check(f, cause, f.processed + restored);
      // A target kept whole was hashed from disk block by block to be offered: nothing was written to read back.
      if (!checked.cause && verify && !f.kept?.whole) checked.cause = await this.reread(f, f.verdict!.digest);
      if (this.closed) return;
      this.settle(f, shown, checked);
      this.results.flush();
    });
  }

  /** Runs whole-file work after the work queued before it; its failure ends the session. */
  private later(work: () => Promise<void>): void {
    this.slow = this.slow.then(work).catch((e) => this.die(e as Error));
  }

  /**
   * The digest of what f holds, and why f fails, if it does: the cause it came
   * with, a short file, or a digest that differs from the sender's.
   */
  private check(f: RecvFile, cause: string | undefined, covered: bigint): Checked {
    const digest = f.digest.final();
    // --sparse: holes never travel; the digest covers the blocks that did, and the size is set here.
    const whole = this.opts.sparse && !this.opts.resume ? covered === f.verdict!.bytes : covered === f.entry.size;
    if (!cause && f.inplace && this.opts.sparse && !this.opts.resume) cause = this.zeroUnwritten(f);
    if (!cause && (this.opts.sparse || f.inplace) && !f.special && !f.kept?.whole) cause = this.sized(f);
    if (!cause && (!whole || !sameDigest(digest, f.verdict!.digest))) {
      cause = "integrity check failed: what was written differs from what was read";
    }
    // Blocks arrived, so the file exists; a file nobody created cannot pass the checks above.
    if (!cause && f.fd < 0) cause = "internal error: a verified file was never created";
    return { cause, digest, covered };
  }

  /** Renames a file that passed over its target, or drops it; tells the report and the sender. */
  private settle(f: RecvFile, shown: string, { cause, digest, covered }: Checked): void {
    this.files.delete(f.entry.id);
    if (f.name.endsWith(PART_SUFFIX)) this.partNames.delete(`${f.dir}/${f.name}`);
    if (cause || f.special) {
      if (cause) cause += this.dropPart(f); // while the file is open, and so locked: our own temporary name
      if (f.fd >= 0) this.lib.escp_close(f.fd);
    } else {
      cause = this.commit(f);
    }
    if (f.answered) return;
    if (cause) {
      this.stats.failures++;
      this.events.failed(shown, cause, f.entry.id);
    } else {
      this.stats.files++;
      this.stats.bytes += Number(f.entry.size);
      this.events.finished(shown, Number(f.entry.size));
      if (log.enabled("debug")) log.debug("file done: verified and renamed", { file: f.entry.id, path: shown });
    }
    const v: FileVerdict = { id: f.entry.id, status: cause ? -1 : 0, bytes: cause ? covered : f.entry.size, digest, message: cause ? `${shown}\0${cause}` : "" };
    this.results.add(v);
  }

  /**
   * --resume: blocks the sender did not resend are the ones we held. Their digests
   * join the file's; if they live in the old target they are copied into the
   * temporary file. Returns the bytes they cover, or why they cannot be used: the old
   * target is no longer the file, as it was, whose blocks were offered (someone wrote
   * it or put another in its place meanwhile), and the sender sent none of them.
   */
  private async restoreKept(f: RecvFile): Promise<bigint | string> {
    const k = f.kept!;
    const bs = BigInt(this.opts.blockSize);
    let bytes = 0n;
    k.whole = k.fromTarget && k.sameSize && f.processed === 0n && this.keepTarget(f);
    if (!k.whole && f.refused) return f.refused;
    const copy = k.fromTarget && !k.whole;
    const old = copy ? this.openTarget(f) : { fd: -1 };
    const src = old.fd;
    const changed = "the file there changed while --resume used the blocks it held; copy it again";
    if (copy && (!old.st || fileIdentity(old.st) !== k.target)) {
      if (src >= 0) this.lib.escp_close(src);
      return changed;
    }
    if (copy && f.fd < 0) {
      // Offered whole but not kept (-p cannot set another user's file): no block came to make the copy.
      const dfd = this.dirs.get(f.dir);
      f.fd = dfd < 0 ? dfd : this.lib.escp_create_part(dfd, f.tmpC!, 0, 0, null);
      if (f.fd < 0) {
        this.lib.escp_close(src);
        return openFailure(f.fd);
      }
    }
    const buf = copy ? Buffer.alloc(this.opts.blockSize) : undefined;
    for (let i = 0; i < k.n && !this.closed; i++) {
      if (f.received![i]) continue;
      await slice();
      const off = BigInt(i) * bs;
      const len = Number(f.entry.size - off < bs ? f.entry.size - off : bs);
      // --sparse: a hole of the old target stays one (the file's size is set below).
      if (buf && !(this.opts.sparse && src >= 0 && nextDataBlock(src, off, bs, f.entry.size) > off)) {
        if (src < 0 || Number(this.lib.escp_pread(src, ptr(buf), len, off)) !== len) break;
        fs.writeSync(f.fd, buf, 0, len, Number(off));
      }
      f.digest.add(off, len, k.hashes.subarray(i * 16, i * 16 + 16));
      bytes += BigInt(len);
    }
    // Written to while we copied from it: what we copied may not be what was offered.
    const still = src < 0 || fileIdentity(fs.fstatSync(src, { bigint: true })) === k.target;
    if (src >= 0) this.lib.escp_close(src);
    if (!still) return changed;
    this.stats.skippedBytes += Number(bytes);
    // A partial file longer than the source (it changed) must not keep its tail.
    const cause = k.whole ? undefined : this.sized(f);
    return cause ?? bytes;
  }

  /**
   * --resume found every block of the file in its target (same size, other time, or
   * --verify, which hashes instead of trusting the time): the target stays, the same
   * file with its links, holes, owner and mode, instead of a copy of it taking its
   * name; only -p's mode and times are set. Our empty temporary file goes. Not where
   * -p could not set them on another user's file (the copy, ours, takes them).
   */
  private keepTarget(f: RecvFile): boolean {
    const { fd, st } = this.openTarget(f);
    if (!st) return false;
    if (fileIdentity(st) !== f.kept!.target) {
      this.lib.escp_close(fd);
      return false;
    }
    if (this.opts.preserve && !this.privileged && Number(st.uid) !== process.geteuid?.()) {
      this.lib.escp_close(fd);
      return false;
    }
    if (f.fd >= 0) {
      this.lib.escp_unlinkat_beneath(this.dirs.get(f.dir), f.tmpC!, 0); // ours, still locked through f.fd
      this.lib.escp_close(f.fd);
    }
    Object.assign(f, { fd, tmp: f.name, tmpC: f.nameC, replaces: false, refused: undefined, mode: this.opts.preserve ? f.mode : MODE_KEEP });
    return true;
  }

  /**
   * --verify, or a file on FUSE: hash the file again from disk, block by block (--sparse:
   * the blocks that came), and compare with the sender's digest. Why it fails, if it does.
   */
  private async reread(f: RecvFile, expected: Uint8Array): Promise<string | undefined> {
    const why = await this.readBackFails(f, expected);
    return why && why + this.fuseHint(f);
  }

  /** What a failure of a file on FUSE adds when several streams wrote it. */
  private fuseHint(f: RecvFile): string {
    return f.readBack && !this.opts.verify && this.pool.dataStreams > 1 ? ON_FUSE : "";
  }

  private async readBackFails(f: RecvFile, expected: Uint8Array): Promise<string | undefined> {
    const fd = this.lib.escp_reopen_read(f.fd, 1); // what f.fd is, not what its name is now
    if (fd < 0) return `verify: ${causeOf(fd)}`;
    const d = new FileDigest();
    const h = new Uint8Array(16);
    const bs = BigInt(this.opts.blockSize);
    try {
      const sparse = this.opts.sparse && !this.opts.resume;
      for (let off = 0n; off < f.entry.size && !this.closed; off += bs) {
        if (sparse && (off = nextDataBlock(fd, off, bs, f.entry.size)) >= f.entry.size) break;
        const len = f.entry.size - off < bs ? f.entry.size - off : bs;
        const r = this.lib.escp_hash_range(fd, off, len, ptr(h));
        if (r === -ENODATA) return "verify failed: the file read back from disk is shorter than the source";
        if (r < 0) return `verify: ${causeOf(r)}`;
        d.add(off, Number(len), h);
        await slice();
      }
    } finally {
      this.lib.escp_close(fd);
    }
    return sameDigest(d.final(), expected) ? undefined : "verify failed: the file read back from disk differs from the source";
  }

  /** --inplace --sparse: the old bytes of the blocks that did not come (the source's holes) go, as holes where the filesystem can. */
  private zeroUnwritten(f: RecvFile): string | undefined {
    const written = f.received!;
    if (written.length === 0) return undefined;
    f.emptied = true; // from here on, a failure leaves the target neither old nor new
    const r = this.lib.escp_zero_unwritten(f.fd, ptr(written), written.length, this.oneBlock, f.entry.size);
    return r < 0 ? causeOf(r) : undefined;
  }

  private sized(f: RecvFile): string | undefined {
    // Only to change the size: fusefat refuses any ftruncate, even to the size a file has.
    if (fstatSize(f.fd) === Number(f.entry.size)) return undefined;
    const r = this.lib.escp_ftruncate(f.fd, f.entry.size);
    return r < 0 ? causeOf(r) : undefined;
  }

  /** Mode (and with -p times), close, rename over the target: one native call; closes f.fd. */
  private commit(f: RecvFile): string | undefined {
    const dfd = this.dirs.get(f.dir);
    if (dfd < 0) {
      this.lib.escp_close(f.fd);
      return openFailure(dfd);
    }
    const replaces = f.replaces ? COMMIT_REPLACES | (this.opts.preserve ? 0 : COMMIT_OLD_MODE) : 0;
    const flags = (this.opts.preserve ? COMMIT_TIMES : 0) | (f.unnamed ? COMMIT_UNNAMED : 0) | replaces;
    const times = this.opts.preserve ? timesOf(f.entry.atimeNs, f.entry.mtimeNs) : undefined;
    const r = this.lib.escp_commit_file(f.fd, f.mode, flags, times ? ptr(times) : null, dfd, f.tmpC!, f.nameC!);
    if (r >= 0) return undefined;
    // A failed rename leaves our temporary file, unless its name holds ours no more.
    return causeOf(r) + (NAME_LOST.has(r) ? "" : this.dropPart(f));
  }

  /**
   * The old target, for reading, by its name, with its stat: never waiting on a FIFO
   * put there meanwhile; anything but a regular file is refused (fd -EINVAL).
   */
  private openTarget(f: RecvFile): { fd: number; st?: fs.BigIntStats } {
    const dfd = this.dirs.get(f.dir);
    const fd = dfd < 0 ? dfd : this.lib.escp_openat_beneath(dfd, f.nameC!, O_RDONLY | O_NONBLOCK, 0, 0, null);
    if (fd < 0) return { fd };
    const st = fs.fstatSync(fd, { bigint: true });
    if (st.isFile()) return { fd, st };
    this.lib.escp_close(fd);
    return { fd: -EINVAL };
  }

  /**
   * Removes a failed file's temporary name; --resume keeps it to resume from (when it holds a block), an
   * unnamed file has none (its data goes with its descriptor), and with --inplace
   * it is the target's (left as the failure left it, as the option says). What the
   * failure's message adds when a name stays (a directory made immutable, or
   * read-only, meanwhile; a target --inplace began to write): "" when it went.
   */
  private dropPart(f: RecvFile): string {
    if (!f.tmp || f.fd < 0) return "";
    if (f.inplace) return f.processed > 0n || f.emptied ? `; ${LEFT_INCOMPLETE}` : "";
    if (f.tmp === f.name) return ""; // a target --resume kept whole: it is the file itself
    // --resume keeps its partial file, but not one made this run for a file it may not replace,
    // nor one holding no whole block (a full disk refused its first): the next --resume would
    // offer nothing of it, and an empty `.NAME.escp-part` per file not reached would stay.
    if ((this.opts.resume && !f.refused && fstatSize(f.fd) >= this.opts.blockSize) || f.unnamed) return "";
    const dfd = this.dirs.get(f.dir);
    const r = dfd < 0 ? dfd : this.lib.escp_unlinkat_beneath(dfd, f.tmpC!, 0);
    return r < 0 && r !== -ENOENT ? `; its temporary file ${this.target.show(f.dir ? `${f.dir}/${f.tmp}` : f.tmp)} is left behind (${codeText(r)})` : "";
  }

  /**
   * Directories' modes (-p, or one we made writable to fill) and times (-p) last,
   * deepest first, so writing their contents does not change them. Without -p the
   * mode is the source's less the umask, as mkdir would have made it.
   */
  private finishDirs(): void {
    for (const { rel, entry } of this.madeDirs.reverse()) {
      const fd = this.lib.escp_openat_beneath(this.target.rootFd, cstr(rel), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY, 0, 0, null);
      if (fd < 0) continue;
      this.lib.escp_fchmod(fd, entry.mode & 0o7777 & (this.opts.preserve ? 0o7777 : ~this.umask));
      if (this.opts.preserve) {
        const times = timesOf(entry.atimeNs, entry.mtimeNs);
        this.lib.escp_futimens(fd, ptr(times));
      }
      this.lib.escp_close(fd);
    }
  }

  private need(id: bigint): void {
    // Data for an id the sender has not announced yet is normal (stream 0 may lag);
    // data for one it announced and we already settled is a protocol violation.
    // After END nothing more will be announced either.
    if ((id <= this.highestId || this.senderEnded) && !this.files.has(id)) {
      this.die(new ProtocolError(`data for file id ${id}, which is not being received`));
    }
  }

  private die(e: Error): void {
    if (this.fatal) return;
    this.fatal = e;
    this.pool.abort();
    this.cleanup();
    this.ended();
    this.died();
  }
}

const PART_SUFFIX = ".escp-part";
/** The most bytes a name may have (NAME_MAX). */
const NAME_MAX = 255;

/**
 * The temporary name beside the target. It is fixed (not random) so that a
 * later --resume finds what a killed run left; a run without --resume simply
 * overwrites it. A name too long to take the dot and the suffix keeps what
 * fits of its start and a digest of the whole, so that two long names that
 * begin alike never share one (85 CJK characters are 255 bytes, and a
 * temporary name past that failed with "File name too long").
 */
export function partBase(name: string): string {
  const whole = `.${name}${PART_SUFFIX}`;
  if (nameBytes(whole) <= NAME_MAX) return whole;
  const tag = `~${new Bun.CryptoHasher("sha256").update(encodeName(name)).digest("hex").slice(0, 16)}`;
  return `.${prefixOfBytes(name, NAME_MAX - 1 - tag.length - PART_SUFFIX.length)}${tag}${PART_SUFFIX}`;
}

/** A temporary name of our own where the fixed one is taken: `.NAME.XXXXXX.escp-part`, random. */
function otherPart(name: string): string {
  return partBase(`${name}.${crypto.getRandomValues(new Uint32Array(1))[0].toString(16).padStart(8, "0").slice(0, 6)}`);
}

/** What is at `name` in a directory now (never followed), as far as the receiver's choices go. */
interface Existing {
  kind: "file" | "dir" | "link" | "fifo" | "special";
  size: bigint;
  mtimeNs: bigint;
  mode: number;
}

const S_IFMT = 0o170000n, S_IFREG = 0o100000n, S_IFDIR = 0o040000n, S_IFLNK = 0o120000n, S_IFIFO = 0o010000n, S_IFBLK = 0o060000n;

/** Nothing, or nothing that can be seen (ENOENT, EACCES...), is undefined. */
function statAt(dfd: number, name: Buffer): Existing | undefined {
  const out = new BigInt64Array(STAT_SLOTS);
  if (native().escp_fstatat(dfd, name, ptr(out)) < 0) return undefined;
  const t = out[6];
  const kind = t === S_IFREG ? "file" : t === S_IFDIR ? "dir" : t === S_IFLNK ? "link" : t === S_IFIFO ? "fifo" : "special";
  return { kind, size: out[0], mtimeNs: statTimeNs(out, 1), mode: Number(out[2]) };
}

/**
 * What a write by anyone but root leaves of a file's mode, as the kernel clears it when
 * scp writes into the file: no setuid, and no setgid where the group may execute.
 */
function withoutSetId(mode: number): number {
  return mode & ~0o4000 & ~(mode & 0o010 ? 0o2000 : 0);
}

function fstatSize(fd: number): number {
  const out = new BigInt64Array(STAT_SLOTS);
  return native().escp_fstat(fd, ptr(out)) < 0 ? 0 : Number(out[0]);
}

const EXDEV = 18, EEXIST = 17, EINVAL = 22, ENOENT = 2, ENODATA = 61;

/** A commit's failures that find the name it was writing no longer holding its file: nothing there to remove. */
const NAME_LOST = new Set<number>([E.BUSY, E.PART_GONE, E.PART_REPLACED, E.DIR_GONE, E.TARGET_GONE]);

/** Why a path under the destination could not be opened or made, in the user's terms. */
function openFailure(code: number): string {
  return code === -EXDEV ? "a symbolic link on the way leads outside the destination: refused" : codeText(code);
}

/**
 * What the user reads of a failed native call on a file: the cause alone. The call,
 * our temporary name and descriptor numbers ("rename .f.escp-part to f", "hash fd 12")
 * are no help there; they go to the log.
 */
function causeOf(code: number): string {
  if (log.enabled("debug")) log.debug("native call failed", { detail: nativeError(code) });
  return codeText(code);
}

/** Which file it is, and as it is now: a write or a chmod changes its ctime. */
function fileIdentity(s: fs.BigIntStats): string {
  return `${s.dev}:${s.ino}:${s.ctimeNs}:${s.size}`;
}

/** The type bits of what fd is (S_IFREG, S_IFBLK...), or -1n. */
function typeOf(fd: number): bigint {
  const out = new BigInt64Array(STAT_SLOTS);
  return native().escp_fstat(fd, ptr(out)) >= 0 ? out[6] & S_IFMT : -1n;
}


function decompress(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(1 << 20);
  const n = Number(native().escp_zstd_decompress(ptr(body), body.length, ptr(out), out.length));
  if (n < 0) throw new ProtocolError(`FILES record does not decompress: ${nativeError(n)}`);
  return out.subarray(0, n);
}

dfgOnly(Receiver.prototype, statAt, partBase, withoutSetId);
