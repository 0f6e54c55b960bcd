/**
 * The program version (package.json) and the build it came from. The
 * bootstrap cache on remote hosts is keyed by both (CACHE_TAG, with the machine): two builds
 * of one version must never share a cached copy, or a host would keep
 * running an older build's protocol.
 */
import { machine } from "node:os";
import pkg from "../package.json" with { type: "json" };

declare const ESCP_BUILD: string | undefined; // set by scripts/build.sh (--define)

export const VERSION: string = pkg.version;
/** A digest of the sources the executable was built from; "dev" when run by bun from src/. */
export const BUILD: string = typeof ESCP_BUILD === "string" ? ESCP_BUILD : "dev";
/**
 * A build's cache directory is also named for the machine (`uname -m`): a home shared by
 * x86_64 and aarch64 hosts (NFS) must not hand one the other's executable. The remote
 * snippet asks `uname -m` there (bootstrap.ts); here it is this host's.
 */
export const CACHE_BUILD = `${VERSION}-${BUILD}`;
export const CACHE_TAG = `${CACHE_BUILD}-${machine()}`;
/** Under $HOME: every build's cached files, a directory per build (cache.ts prunes old ones). */
export const CACHE_ROOT = ".cache/escp";
/** Under $HOME: this build's cached files (the bootstrapped executable on a remote host, the native library). */
export const CACHE_DIR = `${CACHE_ROOT}/${CACHE_TAG}`;
