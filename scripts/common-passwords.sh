#!/usr/bin/env bash
# Regenerates common-passwords.txt, the list of common passwords the server refuses, from the
# password list of the npm package @zxcvbn-ts/language-common (MIT licence, see README.md,
# "Security model"), at the pinned version below. Running it again gives the identical file.
#
#   scripts/common-passwords.sh            # rewrite common-passwords.txt
#   scripts/common-passwords.sh --check    # exit 1 unless the file is what the package gives
#
# Needs npm and node. To move to another version, change VERSION and INTEGRITY (from
# `npm view @zxcvbn-ts/language-common@VERSION dist.integrity`), run it, and commit both.
set -euo pipefail

PACKAGE=@zxcvbn-ts/language-common
VERSION=4.1.3
INTEGRITY=sha512-g2bg4skmlJG9aJqC/nWziZzgYpSe/f3rKeGobrkdFiOrfZVFqqzUgC6BUQWuX54Sua9j0Jxxt+1bf4f/Mal1Kg==

cd "$(dirname "$0")/.."
out=common-passwords.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

tarball=$(cd "$tmp" && npm pack --silent "$PACKAGE@$VERSION")
# The pinned hash, not only the registry's word, vouches for what is packed.
node -e '
  const crypto = require("crypto"), fs = require("fs");
  const [file, want] = process.argv.slice(1);
  const got = "sha512-" + crypto.createHash("sha512").update(fs.readFileSync(file)).digest("base64");
  if (got !== want) { console.error(`${file}: integrity ${got}, want ${want}`); process.exit(1); }
' "$tmp/$tarball" "$INTEGRITY"
tar -xzf "$tmp/$tarball" -C "$tmp" package/src/passwords.json

# One password a line, lowercased. The server lowercases with Go's strings.ToLower, which
# agrees with JavaScript's toLowerCase on ASCII only: anything else stops the script, so
# that a new version with such entries is looked at rather than silently mismatched.
node -e '
  const list = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  if (!Array.isArray(list)) throw new Error("passwords.json is not an array");
  const lines = list.map((p) => {
    if (typeof p !== "string" || !/^[\x21-\x7e]+$/.test(p)) throw new Error("unexpected entry " + JSON.stringify(p));
    return p.toLowerCase();
  });
  process.stdout.write(lines.join("\n") + "\n");
' "$tmp/package/src/passwords.json" | LC_ALL=C sort -u >"$tmp/$out"

if [ "${1:-}" = --check ]; then
  if cmp -s "$tmp/$out" "$out"; then
    echo "$out matches $PACKAGE@$VERSION"
    exit 0
  fi
  echo "$out differs from $PACKAGE@$VERSION: run scripts/common-passwords.sh" >&2
  exit 1
fi
mv "$tmp/$out" "$out"
echo "wrote $out: $(wc -l <"$out") passwords from $PACKAGE@$VERSION"
