package local

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"

	"attache.dev/attache/providers/sdk"
)

// checkRel refuses a path that is not a clean relative path: empty,
// absolute, containing "..", "." or empty components, or a NUL. field names
// the parameter in the error.
func checkRel(field, p string) error {
	switch {
	case p == "":
		return sdk.InvalidArgument(field, "must not be empty")
	case strings.ContainsRune(p, 0):
		return sdk.InvalidArgument(field, "must not contain NUL")
	case strings.HasPrefix(p, "/") || strings.HasPrefix(p, `\`):
		return sdk.InvalidArgument(field, "must be a relative path, got absolute %q", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return sdk.InvalidArgument(field, "must stay below its directory: %q contains \"..\"", p)
		}
	}
	if path.Clean(p) != p {
		return sdk.InvalidArgument(field, "must be a clean path (no \".\", empty components or trailing \"/\"), got %q", p)
	}
	return nil
}

// noSymlinks refuses rel (relative to root) if it or any existing parent is
// a symbolic link, so no step follows a link out of (or around) the tree.
// os.Root refuses escapes too; this check gives the error a field name.
func noSymlinks(root *os.Root, field, rel string) error {
	parts := strings.Split(rel, "/")
	for i := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		fi, err := root.Lstat(prefix)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return sdk.InvalidArgument(field, "%v", err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return sdk.InvalidArgument(field, "%q is a symbolic link; links are refused below the provider root", prefix)
		}
	}
	return nil
}

// tenantDir is a tenant's directory relative to the root.
func tenantDir(tenant string) string { return "tenants/" + tenant }

// appDir is a tenant's app state directory relative to the root.
func appDir(tenant string) string { return "apps/" + tenant }
