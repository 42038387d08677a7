// sdk-js: what a Node.js service does with the AWS SDK for JavaScript v3 — a client with no
// credentials given, so it uses the default chain (fromNodeProviderChain: environment, SSO,
// shared files, web identity token file, container/ECS and EKS Pod Identity, IMDS), and one
// STS GetCallerIdentity call. Prints one JSON object; exits 0 either way.
"use strict";
const fs = require("fs");
const path = require("path");
const { STSClient, GetCallerIdentityCommand } = require("@aws-sdk/client-sts");

function sdkVersion() {
  // The package's "exports" hide package.json from require(); read the installed file.
  const file = path.join(__dirname, "node_modules", "@aws-sdk", "client-sts", "package.json");
  return JSON.parse(fs.readFileSync(file, "utf8")).version;
}

async function main() {
  const out = { sdk: "aws-sdk-js-v3", version: sdkVersion() };
  try {
    const client = new STSClient({});
    const ident = await client.send(new GetCallerIdentityCommand({}));
    out.arn = ident.Arn;
  } catch (e) {
    out.error = `${e.name}: ${e.message}`;
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main();
