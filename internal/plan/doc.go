// Package plan is the deployment plan document: the YAML authoring format
// humans write, its conversion to the attache.plan.v1.Plan protobuf,
// validation, deterministic encoding, the size limit and DSSE signing.
//
// A plan is signed as a DSSE envelope (JSON) whose payload is the plan's
// deterministic protobuf encoding and whose payloadType is PayloadType; the
// agent checks it with package planverify.
//
// Imported by the control plane, the agent and the installer (internal/* is
// shared by them); never by providers, which see only the steps handed to
// them through the provider protocol.
package plan
