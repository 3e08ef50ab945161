//go:build unix

package cpcli

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"attache.dev/attache/controlplane/keys"
)

// checkOwner refuses to work on a data directory whose root.json belongs to
// another user: files written as that other user (new keys, roots/) would
// be unreadable by the control plane, which then fails to load its keys.
func checkOwner(dataDir string) error {
	fi, err := os.Stat(filepath.Join(dataDir, keys.RootFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil // keys.LoadExisting explains what is missing
	}
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := os.Geteuid(); uint64(st.Uid) != uint64(euid) {
		owner := "uid " + strconv.FormatUint(uint64(st.Uid), 10)
		hint := "'#" + strconv.FormatUint(uint64(st.Uid), 10) + "'"
		if u, err := user.LookupId(strconv.FormatUint(uint64(st.Uid), 10)); err == nil {
			owner, hint = u.Username+" ("+owner+")", u.Username
		}
		return fmt.Errorf("%s belongs to %s, but this command runs as uid %d: files it writes would not be readable by the control plane; run it as the control plane's user, e.g. sudo -u %s attache-controlplane keys …",
			dataDir, owner, euid, hint)
	}
	return nil
}
