#!/usr/bin/env bash
# Installs the two stand-ins as the plugins resource-command v1.2.1 and resource-docker v4.11.2 into
# $PULUMI_HOME (default ~/.pulumi) with `pulumi plugin install --file`, so that the engine takes them
# without its "using pulumi-resource-... from $PATH" warning (the alternative: bin/ first on PATH).
# Each installed plugin is a two-line launcher that runs the sources in this checkout.
#
# Usage: tests/real/providers/install.sh [path/to/pulumi]   (default: pulumi on PATH)
set -euo pipefail
here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
pulumi=${1:-pulumi}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for spec in command:1.2.1 docker:4.11.2; do
  name=${spec%%:*} version=${spec#*:}
  printf '#!/usr/bin/env bash\nexec %q "$@"\n' "$here/bin/pulumi-resource-$name" > "$tmp/pulumi-resource-$name"
  chmod +x "$tmp/pulumi-resource-$name"
  "$pulumi" plugin install resource "$name" "$version" --file "$tmp/pulumi-resource-$name" --reinstall
done
