#!/usr/bin/env bash
# Install Apicurio Registry (prebuilt Quarkus fast-jar from Maven Central) into <dest_dir>.
#
# Usage: install.sh <dest_dir>
#   e.g. stack/apicurio/install.sh /work/main/.stack/apicurio
#
# Idempotent: if <dest_dir>/.apicurio-version matches the pinned version and the
# jar is present, nothing is downloaded. On success the ONLY thing written to stdout
# is the absolute path of the runnable jar (<dest_dir>/quarkus-app/quarkus-run.jar),
# so callers can do:  JAR="$(stack/apicurio/install.sh .stack/apicurio)"
# Progress/diagnostics go to stderr. Needs: mvn (any JDK >= 8 for Maven itself),
# network access to Maven Central (or a warm ~/.m2). Running the jar needs Java 21+.
set -euo pipefail

APICURIO_VERSION="${APICURIO_VERSION:-3.3.3}"

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 <dest_dir>" >&2
  exit 2
fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
DEST="$(cd "$1" && pwd)"
APP_DIR="$DEST/quarkus-app"
JAR="$APP_DIR/quarkus-run.jar"
MARKER="$DEST/.apicurio-version"

log() { echo "[apicurio-install] $*" >&2; }

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$APICURIO_VERSION" && -f "$JAR" ]]; then
  log "Apicurio Registry $APICURIO_VERSION already installed in $APP_DIR"
  echo "$JAR"
  exit 0
fi

command -v mvn >/dev/null 2>&1 || { log "ERROR: mvn not found on PATH"; exit 1; }

STAGE="$DEST/.quarkus-app.staging.$$"
BUILD="$DEST/.mvn-build.$$"
cleanup() { rm -rf "$STAGE" "$BUILD"; }
trap cleanup EXIT
rm -rf "$STAGE" "$BUILD"

log "Resolving io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all from Maven Central (~160 MB) ..."
# Maven's own output goes to stderr so stdout carries only the jar path.
mvn -B -q -Dstyle.color=never -f "$SCRIPT_DIR/pom.xml" \
    -Dapicurio.version="$APICURIO_VERSION" \
    -Dapicurio.outputDir="$STAGE" \
    -Dapicurio.buildDir="$BUILD" \
    package 2>&1 | sed $'s/\x1b\\[[0-9;]*m//g' >&2

if [[ ! -f "$STAGE/quarkus-run.jar" ]]; then
  log "ERROR: $STAGE/quarkus-run.jar missing after unpack"
  exit 1
fi

rm -f "$MARKER"
rm -rf "$APP_DIR"
mv "$STAGE" "$APP_DIR"
echo "$APICURIO_VERSION" > "$MARKER"
log "Installed Apicurio Registry $APICURIO_VERSION into $APP_DIR"

# Hint only (never fatal): the registry classes are compiled for Java 21 (class file 65).
java_major() { "$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/{print $2}'; }
ok_java=""
for j in "${JAVA_HOME:-}/bin/java" /usr/lib/jvm/temurin-25-jdk-amd64/bin/java "$(command -v java || true)"; do
  [[ -x "$j" ]] || continue
  v="$(java_major "$j")"
  if [[ "${v%%.*}" -ge 21 ]] 2>/dev/null; then ok_java="$j"; break; fi
done
if [[ -n "$ok_java" ]]; then
  log "Java 21+ available: $ok_java"
else
  log "WARNING: no Java 21+ found; Apicurio Registry $APICURIO_VERSION will not start on Java 17"
fi

echo "$JAR"
