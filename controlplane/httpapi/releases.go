package httpapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/release"
)

// maxReleaseBodyBytes bounds POST /v1/releases: the envelope plus the JSON
// around it (whitespace a hand-edited body may add).
const maxReleaseBodyBytes = release.MaxEnvelopeBytes + 64<<10

// releaseVersionPattern is the release document's version syntax
// (internal/release), checked on path values and pins.
var releaseVersionPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)

func validReleaseVersion(s string) error {
	if !releaseVersionPattern.MatchString(s) {
		return fmt.Errorf("%.80q is not a release version: 1-64 of A-Z, a-z, 0-9, '.', '_', '+' and '-', starting with a letter or digit", s)
	}
	return nil
}

// signHint is what to do with a release the control plane will not take.
const signHint = "a release must be signed by the vendor's release key before it is pushed: attache release sign --key release.key release.yaml --out release.signed.json"

func (s *server) pushRelease(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apiv1.PushReleaseRequest
	if err := decodeLimit(w, r, &req, maxReleaseBodyBytes); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.status == http.StatusRequestEntityTooLarge {
			return &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf(
				"request body larger than %d bytes; a signed release may be at most %d bytes (768 KiB) so that every plan carrying it fits in 1 MiB: make the manifests or migrations smaller",
				maxReleaseBodyBytes, release.MaxEnvelopeBytes)}
		}
		return err
	}
	raw := bytes.TrimSpace(req.Envelope)
	if len(raw) == 0 || string(raw) == "null" {
		return errBadRequest("envelope: missing: the body must be {\"envelope\": <the signed release>}; %s", signHint)
	}
	if raw[0] != '{' {
		return errBadRequest("envelope: must be the signed release's DSSE envelope (a JSON object), not a JSON %s; %s", jsonKind(raw[0]), signHint)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return errBadRequest("envelope: %v", err)
	}
	env := buf.Bytes()
	root := s.cfg.ReleaseRoot()
	if root == nil {
		return errors.New("httpapi: no trust root loaded")
	}
	rel, err := release.Verify(r.Context(), root, env)
	if err != nil {
		return releaseRefused(err)
	}
	c.target = rel.Version
	if err := release.Fits(rel, env); err != nil {
		if errors.Is(err, release.ErrTooLarge) {
			return &apiError{status: http.StatusRequestEntityTooLarge, msg: "release " + release.Ref(rel) + ": " + err.Error(), err: err}
		}
		return errBadRequest("release %s: %v", release.Ref(rel), err)
	}
	sum := sha256.Sum256(env)
	stored := store.Release{
		Version:   rel.Version,
		Name:      rel.Name,
		Envelope:  env,
		Digest:    hex.EncodeToString(sum[:]),
		PushedBy:  c.actor,
		CreatedAt: c.now,
	}
	keyIDs := envelopeKeyIDs(env)
	detail := map[string]any{
		"name":    rel.Name,
		"version": rel.Version,
		"digest":  stored.Digest,
		"images":  slices.Sorted(maps.Keys(rel.Images)),
		"key_ids": keyIDs,
	}
	if err := s.cfg.Store.CreateRelease(r.Context(), stored, c.entry(auditlog.OutcomeSuccess, detail)); err != nil {
		if errors.Is(err, store.ErrAlreadyExists) {
			return s.releaseExists(r, stored)
		}
		return err
	}
	writeJSON(w, http.StatusCreated, releaseOut(stored, rel, keyIDs))
	return nil
}

// releaseRefused explains why release.Verify refused a pushed envelope.
func releaseRefused(err error) error {
	switch {
	case errors.Is(err, release.ErrTooLarge):
		return &apiError{status: http.StatusRequestEntityTooLarge, msg: "envelope: " + err.Error(), err: err}
	case errors.Is(err, release.ErrSignature):
		return &apiError{status: http.StatusBadRequest, err: err, msg: fmt.Sprintf(
			"envelope: not a release signed by a release key the trust root lists (%v); %s, and its public half must be in the trust root (attache-controlplane keys trust-release-key)", err, signHint)}
	case errors.Is(err, release.ErrMalformed), errors.Is(err, release.ErrInvalid):
		return &apiError{status: http.StatusBadRequest, err: err, msg: "envelope: the signed release is not valid: " + err.Error()}
	default:
		return err
	}
}

// releaseExists answers a push of a version that is already stored.
func (s *server) releaseExists(r *http.Request, pushed store.Release) error {
	msg := fmt.Sprintf("release %s already exists: releases are immutable; push a new version", pushed.Version)
	if old, err := s.cfg.Store.GetRelease(r.Context(), pushed.Version); err == nil {
		if old.Digest == pushed.Digest {
			msg += fmt.Sprintf(" (this very release was pushed at %s by %s)", old.CreatedAt.UTC().Format("2006-01-02T15:04:05Z"), old.PushedBy)
		} else {
			msg += fmt.Sprintf(" (the stored one has digest %s, this one %s)", old.Digest, pushed.Digest)
		}
	}
	return &apiError{status: http.StatusConflict, msg: msg, err: store.ErrAlreadyExists}
}

func jsonKind(b byte) string {
	switch {
	case b == '"':
		return "string"
	case b == '[':
		return "array"
	case b == 't' || b == 'f':
		return "boolean"
	default:
		return "number"
	}
}

func (s *server) listReleases(w http.ResponseWriter, r *http.Request, c *call) error {
	rs, err := s.cfg.Store.ListReleases(r.Context())
	if err != nil {
		return err
	}
	out := apiv1.ReleaseList{Releases: make([]apiv1.Release, 0, len(rs))}
	for _, st := range rs {
		// Verified at push; decoded here for display only.
		rel, err := release.Peek(st.Envelope)
		if err != nil {
			s.log.Error("stored release does not decode", "version", st.Version, "err", err)
		}
		out.Releases = append(out.Releases, releaseOut(st, rel, envelopeKeyIDs(st.Envelope)))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getRelease(w http.ResponseWriter, r *http.Request, c *call) error {
	version := r.PathValue("version")
	if err := validReleaseVersion(version); err != nil {
		return errBadRequest("version: %v", err)
	}
	st, err := s.cfg.Store.GetRelease(r.Context(), version)
	if err != nil {
		return storeError(err, "release "+version)
	}
	var (
		rel      *release.Release
		verified bool
		why      string
	)
	if s.cfg.ReleaseRoot != nil {
		rel, err = release.Verify(r.Context(), s.cfg.ReleaseRoot(), st.Envelope)
		if err != nil {
			why = err.Error()
		} else {
			verified = true
		}
	}
	if rel == nil {
		if rel, err = release.Peek(st.Envelope); err != nil {
			s.log.Error("stored release does not decode", "version", st.Version, "err", err)
		}
	}
	out := releaseOut(st, rel, envelopeKeyIDs(st.Envelope))
	if s.cfg.ReleaseRoot != nil {
		out.Verified, out.VerifyError = &verified, why
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// releaseOut shows a stored release; rel (nil when it does not decode)
// supplies what the signed document says.
func releaseOut(st store.Release, rel *release.Release, keyIDs []string) apiv1.Release {
	out := apiv1.Release{
		Name:        st.Name,
		Version:     st.Version,
		Digest:      st.Digest,
		PushedBy:    st.PushedBy,
		CreatedAt:   st.CreatedAt.UTC(),
		SigningKeys: keyIDs,
	}
	if rel == nil {
		return out
	}
	out.Images = rel.Images
	out.ManifestsBytes = len(rel.Manifests)
	out.Flags = rel.Flags
	out.Tiers = rel.Tiers
	for _, m := range rel.Migrations {
		out.Migrations = append(out.Migrations, apiv1.ReleaseMigration{Version: m.Version, Name: m.Name})
	}
	for _, step := range rel.Steps {
		on := step.OnRollback
		if on == "" {
			on = release.OnRollbackRun
		}
		out.Steps = append(out.Steps, apiv1.ReleaseStep{
			ID: step.ID, Provider: step.Provider, Action: step.Action, Resource: step.Resource, DependsOn: step.DependsOn, OnRollback: on,
		})
	}
	return out
}

// envelopeKeyIDs lists the key IDs of a DSSE envelope's signatures, as
// the envelope states them (Verify checked the ones that count).
func envelopeKeyIDs(env []byte) []string {
	var e struct {
		Signatures []struct {
			KeyID string `json:"keyid"`
		} `json:"signatures"`
	}
	if json.Unmarshal(env, &e) != nil {
		return nil
	}
	var out []string
	for _, sig := range e.Signatures {
		if sig.KeyID != "" && !slices.Contains(out, sig.KeyID) {
			out = append(out, sig.KeyID)
		}
	}
	return out
}
