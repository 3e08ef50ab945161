package kubernetes_test

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// syncBuffer is a bytes.Buffer safe for concurrent writes (the logger).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSecretsNeverShown provisions, rotates and fails to update a Secret
// and checks that its values appear in no change, result, output, progress
// message, error or log line — in the clear or base64-encoded.
func TestSecretsNeverShown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	values := []string{"S3cret-Value-of-acme-4242", "Rotated-Secret-Value-7777", "Third-Secret-Value-0000"}
	e.writeSecret(t, "db.pw", values[0])
	var logs syncBuffer
	p := e.provider(t, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	var seen bytes.Buffer // everything the provider showed
	show := func(what string, v any) {
		switch x := v.(type) {
		case *providerv1.ApplyResult:
			b, _ := protojson.Marshal(x)
			seen.Write(b)
		case []*providerv1.Change:
			for _, c := range x {
				b, _ := protojson.Marshal(c)
				seen.Write(b)
			}
		case error:
			if x != nil {
				seen.WriteString(x.Error())
			}
		}
		seen.WriteString("\n")
	}
	progress := func(pr *providerv1.Progress) { seen.WriteString(pr.GetMessage() + " " + pr.GetResource() + "\n") }
	run := func(s *providerv1.Step) *providerv1.ApplyResult {
		cs, err := p.Plan(t.Context(), s)
		show("plan", cs)
		show("plan error", err)
		res, err := p.Apply(t.Context(), s, progress)
		show("apply", res)
		show("apply error", err)
		return res
	}
	prov := step("prov", "namespace.provision", "acme", map[string]any{
		"secrets": []any{map[string]any{"name": "db", "data": map[string]any{"password": "db.pw"}}},
	})
	if res := run(prov); res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatalf("provision: %v", res)
	}
	run(prov)
	e.writeSecret(t, "db.pw", values[1])
	res := run(prov)
	found := false
	for _, c := range res.GetChanges() {
		if c.GetResource() == "v1/Secret "+e.ns("acme")+"/db" && c.GetOperation() == providerv1.Operation_OPERATION_UPDATE && strings.HasSuffix(c.GetSummary(), "(changes data.password)") {
			found = true
		}
	}
	if !found {
		t.Errorf("rotation not reported as an update of data.password:%s", describe(res.GetChanges()))
	}
	// An update the API server refuses (the Secret was made immutable by
	// hand): the error names the object, not the value.
	if _, err := admin(t).CoreV1().Secrets(e.ns("acme")).Patch(t.Context(), "db", types.MergePatchType, []byte(`{"immutable":true}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.writeSecret(t, "db.pw", values[2])
	_, err := p.Apply(t.Context(), prov, progress)
	show("refused", err)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "v1/Secret "+e.ns("acme")+"/db") {
		t.Errorf("update of an immutable Secret: %v", err)
	}
	// Health and usage do not read Secrets, but check their words too.
	h, _ := p.Health(t.Context())
	b, _ := protojson.Marshal(h)
	seen.Write(b)

	for _, v := range values {
		for _, form := range []string{v, base64.StdEncoding.EncodeToString([]byte(v))} {
			if strings.Contains(seen.String(), form) {
				t.Errorf("secret value %q shown in changes, results, progress or errors", form)
			}
			if strings.Contains(logs.String(), form) {
				t.Errorf("secret value %q in the logs", form)
			}
		}
	}
	if !strings.Contains(logs.String(), `"msg":"apply"`) {
		t.Errorf("the capture holds no log line; logs:\n%s", logs.String())
	}
}

// A secret file that leads out of secrets_dir through a symbolic link is
// refused, and the error does not show the target's content.
func TestSecretSymlinkEscape(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("Outside-Value-9999"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(e.secrets, "link.pw")); err != nil {
		t.Fatal(err)
	}
	p := e.provider(t, nil)
	s := step("prov", "namespace.provision", "acme", map[string]any{
		"secrets": []any{map[string]any{"name": "db", "data": map[string]any{"password": "link.pw"}}},
	})
	_, err := p.Plan(t.Context(), s)
	if v := sdk.Violations(err); len(v) != 1 || v[0].Field != "params.secrets[0].data.password" || strings.Contains(err.Error(), "Outside-Value") {
		t.Fatalf("got %v", err)
	}
	t.Log(err)
}
