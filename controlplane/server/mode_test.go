package server

import (
	"fmt"
	"os"
)

func checkMode(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.Mode().Perm() != 0o600 {
		return fmt.Errorf("%s: mode %v, want 0600", p, fi.Mode().Perm())
	}
	return nil
}
