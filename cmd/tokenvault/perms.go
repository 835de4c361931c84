package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// modeRule is what access a file or directory must not grant, and why.
type modeRule struct {
	path   string
	forbid fs.FileMode
	what   string
}

// checkFileModes checks, as ssh does with its keys and directories, that
// the data dir is writable by its owner only (group or others writing could
// swap the database), and that the database and the master-key file give
// others no access and their group no write (the key opens every token; the
// database is sealed, but others could copy or delete it). Group read is
// allowed: Kubernetes' fsGroup makes mounted Secrets group-readable. Paths
// that do not exist yet are skipped (the database of a new data dir). In
// dev mode a finding is a warning; otherwise it is an error naming each
// path, its mode and the fix.
func checkFileModes(dataDir, dbPath, masterKeyFile string, dev bool, log *slog.Logger) error {
	if runtime.GOOS == "windows" {
		return nil // no Unix modes
	}
	rules := []modeRule{
		{dataDir, 0o022, "the data dir is writable by group or others"},
		{dbPath, 0o027, "the database is writable by its group or open to others"},
	}
	// dev mode's generated key, if there is one
	rules = append(rules, modeRule{filepath.Join(dataDir, "master.key"), 0o027, "the master key is writable by its group or open to others"})
	if masterKeyFile != "" {
		rules = append(rules, modeRule{masterKeyFile, 0o027, "the master key is writable by its group or open to others"})
	}
	var problems []string
	for _, r := range rules {
		fi, err := os.Stat(r.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("check file modes: %w", err)
		}
		mode := fi.Mode().Perm()
		if mode&r.forbid == 0 {
			continue
		}
		fix := fmt.Sprintf("chmod %o %s", mode&^r.forbid, r.path)
		problems = append(problems, fmt.Sprintf("%s (%s, mode %04o): %s", r.what, r.path, mode, fix))
	}
	if len(problems) == 0 {
		return nil
	}
	if dev {
		for _, p := range problems {
			log.Warn("dev mode: file modes too open; refused outside dev mode", slog.String("problem", p))
		}
		return nil
	}
	return fmt.Errorf("file modes too open, refusing to start:\n  %s", strings.Join(problems, "\n  "))
}
