/** Small helpers for the shell commands that @pulumi/command runs (always with bash: pipefail). */

/** The interpreter of every command resource: bash, so that `set -o pipefail` catches a failed `docker save`. */
export const BASH = ["/bin/bash", "-c"];

/** Quotes a word for a POSIX shell, only when it needs it. */
export function shq(s: string): string {
    return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * A bash function `as_root CMD ARGS...` for the commands that need root on this host. As root it runs
 * the command itself (a minimal host often has no sudo at all); otherwise, with `sudo` configured,
 * through `sudo -n` (never prompts: fails at once, saying what to do, when sudo wants a password);
 * without it, as the current user. Callers pass absolute program paths (see `resolveProgram`): sudo's
 * secure_path lacks /usr/local/bin on RHEL-family hosts, where k3s lives.
 */
export function asRootFunction(sudo: boolean): string {
    if (!sudo) {
        return 'as_root() { "$@"; }';
    }
    return [
        "as_root() {",
        '  if [ "$(id -u)" -eq 0 ]; then "$@"; return; fi',
        '  if ! command -v sudo >/dev/null 2>&1; then echo "this step needs root and sudo is not installed: run pulumi as root, or install sudo (or pulumi config set sudo false if you may run $1 yourself)" >&2; return 127; fi',
        '  if ! sudo -n true 2>/dev/null; then echo "this step needs root and sudo asks for a password: run sudo -v right before pulumi up (scripts/up does it and keeps it fresh), or allow $1 without a password (NOPASSWD), or run pulumi as root" >&2; return 1; fi',
        '  sudo -n "$@"',
        "}",
    ].join("\n");
}

/** Sets the shell variable `variable` to the absolute path of `program`, or exits 127 saying it is missing. */
export function resolveProgram(variable: string, program: string, hint: string): string {
    return `${variable}=$(command -v ${shq(program)}) || { echo "${program}: not found on PATH ($PATH); ${hint}" >&2; exit 127; }`;
}
