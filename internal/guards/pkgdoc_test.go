package guards

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackageDocs checks that every package in the module says what it is for:
// a doc comment starting "Package <name>" (a main package may instead start
// "Command "). Generated code under protocol/gen is exempt.
func TestPackageDocs(t *testing.T) {
	// -e: the doc check only reads package clauses, so a package that fails
	// to build elsewhere (go vet reports that) must not hide missing docs.
	pkgs := goList(t, "-e", "./...")
	if len(pkgs) == 0 {
		t.Fatal("go list ./... found no packages")
	}
	for _, p := range pkgs {
		if within(p.ImportPath, module+"/protocol/gen") {
			continue
		}
		files := append(append([]string{}, p.GoFiles...), p.CgoFiles...)
		if len(files) == 0 {
			continue // test-only package
		}
		var docs []string
		fset := token.NewFileSet()
		for _, name := range files {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Errorf("%s: %v", p.ImportPath, err)
				continue
			}
			if f.Doc != nil {
				docs = append(docs, f.Doc.Text())
			}
		}
		if len(docs) == 0 {
			t.Errorf("%s has no package doc comment; add one (\"Package %s …\") saying what it does and who may import it", p.ImportPath, p.Name)
			continue
		}
		ok := false
		for _, d := range docs {
			if strings.HasPrefix(d, "Package "+p.Name+" ") || strings.HasPrefix(d, "Package "+p.Name+"\n") ||
				(p.Name == "main" && strings.HasPrefix(d, "Command ")) {
				ok = true
			}
		}
		if !ok {
			want := `"Package ` + p.Name + ` …"`
			if p.Name == "main" {
				want = `"Command <name> …" or "Package main …"`
			}
			t.Errorf("%s: package doc comment should start with %s; it starts %q", p.ImportPath, want, firstLine(docs[0]))
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
