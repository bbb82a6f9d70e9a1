/** Small helpers for the shell commands that @pulumi/command runs (always with bash: pipefail). */

/** The interpreter of every command resource: bash, so that `set -o pipefail` catches a failed `docker save`. */
export const BASH = ["/bin/bash", "-c"];

/** Quotes a word for a POSIX shell, only when it needs it. */
export function shq(s: string): string {
    return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** `sudo -n ` when configured (non-interactive: fails at once with "a password is required" instead of hanging). */
export function sudoPrefix(sudo: boolean): string {
    return sudo ? "sudo -n " : "";
}
