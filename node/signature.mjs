// Signed exports in Node.js, with its built-in crypto only: check an export folder's model.sig (the
// OpenSSF model-signing format edgeae writes: a Sigstore bundle whose DSSE envelope holds an in-toto
// statement listing every file's sha256) against a trusted PEM EC public key, before anything is loaded.
//
//   await verifySignedExport(folder, readFileSync("trusted.pem"))   // throws EdgeError(message, 4)
//
// What it checks: the envelope's ECDSA signature over DSSE's pre-authentication encoding, by the trusted
// key (P-256/SHA-256, P-384/SHA-384, P-521/SHA-512, as model-signing pairs them); then that the folder
// holds exactly the files the signed statement lists (less its ignore_paths), each with its sha256. Only
// key-signed bundles of model-signing's "files" serialization with sha256 are read (what edgeae makes);
// anything else is refused, never passed. Needs a file system: a browser app checks the folder elsewhere.
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFile, readdir, lstat } from "node:fs/promises";
import path from "node:path";

import { EdgeError } from "./edgeae.mjs";

export const SIGNATURE_FILE = "model.sig";
const USAGE = 2, INTEGRITY = 4;
const HASHES = { prime256v1: "sha256", secp384r1: "sha384", secp521r1: "sha512" };
const STATEMENT = "https://in-toto.io/Statement/v1";
const PREDICATE = "https://model_signing/signature/v1.0";

// The trusted key, checked: a PEM EC public key of a curve model-signing signs with.
export function trustedKey(pem, shown = "trusted key") {
  if (Buffer.from(pem).toString("latin1").includes("PRIVATE KEY")) {
    throw new EdgeError(`${shown} is not a PEM public key; that is a private key: give its public half`, USAGE);
  }
  let key;
  try {
    key = createPublicKey(pem);
  } catch (error) {
    throw new EdgeError(`${shown} is not a PEM public key (${error.message.split("\n")[0]})`, USAGE);
  }
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (key.asymmetricKeyType !== "ec" || !(curve in HASHES)) {
    throw new EdgeError(`${shown} is a ${key.asymmetricKeyType} ${curve ?? ""} key; signed exports use EC P-256 keys`,
                        USAGE);
  }
  return { key, hash: HASHES[curve] };
}

// DSSE v1 pre-authentication encoding: what the signature is made over.
function pae(type, body) {
  const t = Buffer.from(type, "utf8");
  return Buffer.concat([Buffer.from(`DSSEv1 ${t.length} `), t, Buffer.from(` ${body.length} `), body]);
}

// Every file under `folder` by its path relative to it ("/"-separated), except the ignored paths.
async function listFiles(folder, ignored, prefix = "") {
  const names = [];
  for (const entry of await readdir(path.join(folder, prefix), { withFileTypes: true })) {
    const name = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (ignored.has(name)) continue;
    if (entry.isSymbolicLink()) throw new EdgeError(`${name} is a symbolic link; a signed export holds none`, INTEGRITY);
    if (entry.isDirectory()) names.push(...await listFiles(folder, ignored, name));
    else names.push(name);
  }
  return names;
}

function refuse(folder, why) {
  return new EdgeError(`${folder}: the signature does not match: ${why}`, INTEGRITY);
}

export async function verifySignedExport(folder, publicKeyPem, shown = "trusted key") {
  const { key, hash } = trustedKey(publicKeyPem, shown);
  let bundle;
  try {
    const where = path.join(folder, SIGNATURE_FILE);
    if ((await lstat(where)).isSymbolicLink()) throw Object.assign(new Error("symbolic link"), { code: "ENOENT" });
    bundle = JSON.parse(await readFile(where, "utf8"));
  } catch (error) {
    if (error.code === "ENOENT") {
      throw new EdgeError(`${folder} is not signed and a trusted key is set: refusing it ` +
                          `(sign it where it is made: edgeae sign ${folder} --key PRIVATE.pem)`, INTEGRITY);
    }
    throw refuse(folder, `${SIGNATURE_FILE} is not a signature bundle (${error.message.split("\n")[0]})`);
  }
  const envelope = bundle?.dsseEnvelope;
  if (typeof envelope?.payload !== "string" || typeof envelope?.payloadType !== "string" ||
      !Array.isArray(envelope?.signatures)) {
    throw refuse(folder, `${SIGNATURE_FILE} holds no DSSE envelope (only model-signing's key-signed bundles are read)`);
  }
  const body = Buffer.from(envelope.payload, "base64");
  const signed = envelope.signatures.some((s) => typeof s?.sig === "string" &&
    verify(hash, pae(envelope.payloadType, body), { key, dsaEncoding: "der" }, Buffer.from(s.sig, "base64")));
  if (!signed) throw refuse(folder, "it was not signed by the trusted key, or the signature was altered");
  let statement;
  try {
    statement = JSON.parse(body.toString("utf8"));
  } catch (error) {
    throw refuse(folder, "the signed statement is not JSON");
  }
  const serialization = statement?.predicate?.serialization;
  if (statement?._type !== STATEMENT || statement?.predicateType !== PREDICATE || serialization?.method !== "files" ||
      serialization?.hash_type !== "sha256" || !Array.isArray(statement?.predicate?.resources)) {
    throw refuse(folder, "the signed statement is not model-signing's per-file sha256 form, which this app reads");
  }
  const expected = new Map(statement.predicate.resources.map((r) => [r.name, r]));
  const actual = await listFiles(folder, new Set(serialization.ignore_paths ?? []));
  const added = actual.filter((name) => !expected.has(name));
  const missing = [...expected.keys()].filter((name) => !actual.includes(name));
  const changed = [];
  for (const name of actual.filter((n) => expected.has(n))) {
    const digest = createHash("sha256").update(await readFile(path.join(folder, name))).digest("hex");
    if (expected.get(name).algorithm !== "sha256" || expected.get(name).digest !== digest) changed.push(name);
  }
  const why = [changed.length && `changed since signing: ${changed.join(", ")}`,
               added.length && `added since signing: ${added.join(", ")}`,
               missing.length && `missing since signing: ${missing.join(", ")}`].filter(Boolean);
  if (why.length) throw refuse(folder, why.join("; "));
  return { files: actual.length };
}
