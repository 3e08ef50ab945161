package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
)

func init() {
	register(action{
		info: &providerv1.ActionInfo{
			Name:    "tenant.provision",
			Summary: "create <root>/tenants/<tenant>/{data,config} and the declared files",
			Params: []*providerv1.ParamInfo{
				{Name: "files", Type: "array<object>", Description: "files to write: {path (relative to the tenant directory), content, mode (octal string, default \"0600\")}"},
			},
		},
		plan:  planProvision,
		apply: applyProvision,
	})
}

// fileSpec is one declared file.
type fileSpec struct {
	field   string // params.files[i]
	rel     string // relative to the root
	content []byte
	mode    fs.FileMode
}

// provisionParams validates tenant.provision's parameters.
func provisionParams(e *env, step *providerv1.Step) ([]fileSpec, error) {
	p := sdk.NewParams(step.GetParams())
	var files []fileSpec
	seen := map[string]bool{}
	for _, f := range p.Objects("files", false) {
		path := f.String("path", true)
		content := f.String("content", false)
		modeStr := f.String("mode", false)
		mode := fs.FileMode(0o600)
		if modeStr != "" {
			m, err := strconv.ParseUint(modeStr, 8, 32)
			if err != nil || m > 0o777 {
				f.Fail("mode", "must be an octal permission such as \"0640\", got %q", modeStr)
			}
			mode = fs.FileMode(m)
		}
		if path == "" {
			continue
		}
		if err := checkRel(f.Field("path"), path); err != nil {
			f.FailPath(f.Field("path"), "%s", sdkViolation(err))
			continue
		}
		if seen[path] {
			f.Fail("path", "%q is declared twice", path)
			continue
		}
		seen[path] = true
		files = append(files, fileSpec{field: f.Field("path"), rel: tenantDir(step.GetTenant()) + "/" + path, content: []byte(content), mode: mode})
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	for _, f := range files {
		if err := noSymlinks(e.root, f.field, f.rel); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// sdkViolation returns the description of an InvalidArgument built by
// sdk.InvalidArgument, so it can be recorded in a Params.
func sdkViolation(err error) string {
	if vs := sdk.Violations(err); len(vs) > 0 {
		return vs[0].Description
	}
	return err.Error()
}

// provisionDirs are the directories every tenant gets.
func provisionDirs(tenant string) []string {
	d := tenantDir(tenant)
	return []string{"tenants", d, d + "/data", d + "/config"}
}

func planProvision(_ context.Context, e *env, step *providerv1.Step) ([]*providerv1.Change, error) {
	files, err := provisionParams(e, step)
	if err != nil {
		return nil, err
	}
	return diffProvision(e, step.GetTenant(), files)
}

// diffProvision compares the wanted tree with the disk.
func diffProvision(e *env, tenant string, files []fileSpec) ([]*providerv1.Change, error) {
	var changes []*providerv1.Change
	for _, d := range provisionDirs(tenant) {
		if d == "tenants" {
			continue // created implicitly with the tenant directory
		}
		if err := noSymlinks(e.root, "tenant", d); err != nil {
			return nil, err
		}
		fi, err := e.root.Lstat(d)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			changes = append(changes, change(d, providerv1.Operation_OPERATION_CREATE, "create directory %s", d))
		case err != nil:
			return nil, err
		case !fi.IsDir():
			return nil, sdk.FailedPrecondition("%s exists and is not a directory", d)
		default:
			changes = append(changes, change(d, providerv1.Operation_OPERATION_NOOP, "directory %s exists", d))
		}
	}
	for _, f := range files {
		fi, err := e.root.Lstat(f.rel)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			changes = append(changes, change(f.rel, providerv1.Operation_OPERATION_CREATE, "write %s (%d bytes, %04o)", f.rel, len(f.content), f.mode))
			continue
		case err != nil:
			return nil, err
		case !fi.Mode().IsRegular():
			return nil, sdk.InvalidArgument(f.field, "%s exists and is not a regular file", f.rel)
		}
		old, err := e.root.ReadFile(f.rel)
		if err != nil {
			return nil, err
		}
		switch {
		case !bytes.Equal(old, f.content):
			changes = append(changes, change(f.rel, providerv1.Operation_OPERATION_UPDATE, "rewrite %s (%d bytes, %04o)", f.rel, len(f.content), f.mode))
		case fi.Mode().Perm() != f.mode:
			changes = append(changes, change(f.rel, providerv1.Operation_OPERATION_UPDATE, "chmod %s %04o", f.rel, f.mode))
		default:
			changes = append(changes, change(f.rel, providerv1.Operation_OPERATION_NOOP, "%s is up to date", f.rel))
		}
	}
	return changes, nil
}

func applyProvision(ctx context.Context, e *env, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	files, err := provisionParams(e, step)
	if err != nil {
		return nil, err
	}
	changes, err := diffProvision(e, step.GetTenant(), files)
	if err != nil {
		return nil, err
	}
	byRel := map[string]fileSpec{}
	for _, f := range files {
		byRel[f.rel] = f
	}
	for _, c := range changes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if c.GetOperation() == providerv1.Operation_OPERATION_NOOP {
			continue
		}
		sdk.Report(progress, c.GetResource(), c.GetSummary())
		f, isFile := byRel[c.GetResource()]
		if !isFile {
			if err := e.root.MkdirAll(c.GetResource(), 0o750); err != nil {
				return nil, fmt.Errorf("%s: %w", c.GetResource(), err)
			}
			continue
		}
		if err := writeFileAtomic(e, f); err != nil {
			return nil, err
		}
	}
	n := countChanges(changes)
	return succeeded(fmt.Sprintf("tenant %s provisioned (%d changes)", step.GetTenant(), n), changes), nil
}

// writeFileAtomic writes f through a temporary file and a rename, so a crash
// leaves either the old or the new content.
func writeFileAtomic(e *env, f fileSpec) error {
	if dir := parentDir(f.rel); dir != "" {
		if err := e.root.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("%s: %w", f.field, err)
		}
	}
	tmp := f.rel + ".attache-tmp"
	_ = e.root.Remove(tmp)
	if err := e.root.WriteFile(tmp, f.content, f.mode); err != nil {
		return fmt.Errorf("%s: %w", f.field, err)
	}
	if err := e.root.Chmod(tmp, f.mode); err != nil { // WriteFile's mode is subject to umask
		return fmt.Errorf("%s: %w", f.field, err)
	}
	if err := e.root.Rename(tmp, f.rel); err != nil {
		_ = e.root.Remove(tmp)
		return fmt.Errorf("%s: %w", f.field, err)
	}
	return nil
}

// parentDir returns the slash-separated parent of rel, "" at the top.
func parentDir(rel string) string {
	for i := len(rel) - 1; i >= 0; i-- {
		if rel[i] == '/' {
			return rel[:i]
		}
	}
	return ""
}
