package guards

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// protoFiles returns the .proto files under protocol/ (not protocol/gen),
// relative to protocol/, slash-separated.
func protoFiles(t *testing.T, protocolDir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(protocolDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path == filepath.Join(protocolDir, "gen") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".proto") {
			rel, err := filepath.Rel(protocolDir, path)
			if err != nil {
				return err
			}
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// genFiles returns the files under dir, relative to it, slash-separated.
func genFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

var serviceDecl = regexp.MustCompile(`(?m)^\s*service\s+\w+\s*\{`)

// TestGeneratedCodePresent needs no tools: every .proto has its .pb.go (and a
// _grpc.pb.go when it declares a service) generated from it, and no generated
// file is left over from a .proto that is gone.
func TestGeneratedCodePresent(t *testing.T) {
	protocolDir := filepath.Join(moduleRoot(t), "protocol")
	genDir := filepath.Join(protocolDir, "gen")
	protos := protoFiles(t, protocolDir)
	want := map[string]bool{}
	for _, rel := range protos {
		src, err := os.ReadFile(filepath.Join(protocolDir, filepath.FromSlash(rel)))
		if err != nil {
			t.Fatal(err)
		}
		base := strings.TrimSuffix(rel, ".proto")
		expect := []string{base + ".pb.go"}
		if serviceDecl.Match(src) {
			expect = append(expect, base+"_grpc.pb.go")
		}
		for _, g := range expect {
			want[g] = true
			b, err := os.ReadFile(filepath.Join(genDir, filepath.FromSlash(g)))
			if err != nil {
				t.Errorf("protocol/%s: generated file protocol/gen/%s missing; run 'make generate'", rel, g)
				continue
			}
			if !bytes.Contains(b, []byte("// source: "+rel+"\n")) {
				t.Errorf("protocol/gen/%s was not generated from protocol/%s; run 'make generate'", g, rel)
			}
		}
	}
	for _, g := range genFiles(t, genDir) {
		if strings.HasSuffix(g, ".pb.go") && !want[g] {
			t.Errorf("protocol/gen/%s has no .proto behind it; run 'make generate' (it cleans protocol/gen)", g)
		}
	}
}

// TestGeneratedCodeFresh regenerates protocol/gen into a temp dir with buf and
// compares it byte for byte with the checked-in tree. It needs buf,
// protoc-gen-go and protoc-gen-go-grpc on PATH at the versions pinned in the
// Makefile (`make test` and `make go-test` arrange that). Without them it
// skips, unless CI=true, where it fails.
func TestGeneratedCodeFresh(t *testing.T) {
	for _, tool := range []string{"buf", "protoc-gen-go", "protoc-gen-go-grpc"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not on PATH; CI must check generated code (run via 'make test', which installs the pinned tools)", tool)
			}
			t.Skipf("%s not on PATH; run 'make tools' and test via 'make go-test' to check freshness", tool)
		}
	}
	protocolDir := filepath.Join(moduleRoot(t), "protocol")
	out := t.TempDir()
	cmd := exec.Command("buf", "generate", "--output", out)
	cmd.Dir = protocolDir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, b)
	}
	fresh := filepath.Join(out, "gen")
	checkedIn := filepath.Join(protocolDir, "gen")
	freshFiles, oldFiles := genFiles(t, fresh), genFiles(t, checkedIn)
	if len(freshFiles) == 0 {
		t.Fatalf("buf generate --output %s wrote nothing under gen/; does buf.gen.yaml still write to gen?", out)
	}
	inFresh := map[string]bool{}
	for _, f := range freshFiles {
		inFresh[f] = true
		want, err := os.ReadFile(filepath.Join(fresh, filepath.FromSlash(f)))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(checkedIn, filepath.FromSlash(f)))
		switch {
		case err != nil:
			t.Errorf("protocol/gen/%s is missing; run 'make generate'", f)
		case !bytes.Equal(got, want):
			t.Errorf("protocol/gen/%s is stale; run 'make generate' (with the pinned tools)", f)
		}
	}
	for _, f := range oldFiles {
		if !inFresh[f] {
			t.Errorf("protocol/gen/%s is not generated any more; run 'make generate' (it cleans protocol/gen)", f)
		}
	}
}
