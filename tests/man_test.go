package tests

// Issue 13: man pages, generated from the cobra commands and kept in man/
// (make man), and make install.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herd-project/herd/tests/internal/manpages"
)

// readManPages returns the *.1 files in dir by name.
func readManPages(t *testing.T, dir string) map[string]string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.1"))
	if err != nil {
		t.Fatal(err)
	}
	pages := map[string]string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		pages[filepath.Base(p)] = string(b)
	}
	return pages
}

// The pages in man/ are what the commands generate now: one per command,
// none missing, none left from a command that is gone.
func TestManPagesUpToDate(t *testing.T) {
	dir := t.TempDir()
	if err := manpages.Generate(dir); err != nil {
		t.Fatal(err)
	}
	want := readManPages(t, dir)
	for _, name := range []string{"herd.1", "herd-pull.1", "herd-version.1", "herd-completion.1"} {
		if _, ok := want[name]; !ok {
			t.Errorf("the generator wrote no %s (it wrote %d pages)", name, len(want))
		}
	}
	kept := readManPages(t, filepath.Join("..", "man"))
	for name, page := range want {
		if got, ok := kept[name]; !ok {
			t.Errorf("man/%s is missing: run make man", name)
		} else if got != page {
			t.Errorf("man/%s is stale (not what the commands generate): run make man", name)
		}
	}
	for name := range kept {
		if _, ok := want[name]; !ok {
			t.Errorf("man/%s documents no command: run make man", name)
		}
	}
}

// checkManPage checks that page, the troff source of the page for command
// (e.g. herd-pull), has a .TH header with its title and a NAME section
// naming it.
func checkManPage(t *testing.T, command, page string) {
	t.Helper()
	var th string
	for line := range strings.Lines(page) {
		if strings.HasPrefix(line, ".TH ") {
			th = strings.TrimSpace(line)
			break
		}
	}
	if !strings.HasPrefix(th, `.TH "`+strings.ToUpper(command)+`" "1" `) {
		t.Errorf("%s's page: .TH line %q, want the title %s, section 1", command, th, strings.ToUpper(command))
	}
	if !strings.Contains(page, ".SH NAME\n"+command+" - ") {
		t.Errorf("%s's page has no NAME section naming it:\n%.300s", command, page)
	}
}

// make install DESTDIR=... PREFIX=/usr puts herd, the completions and every
// man page where each is looked for, and the installed herd runs.
func TestMakeInstall(t *testing.T) {
	tools := needTools(t, map[string]string{"make": "make"})
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	c := exec.Command(tools["make"], "-C", repo, "install", "DESTDIR="+dest, "PREFIX=/usr")
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	usr := filepath.Join(dest, "usr")
	installed := map[string]string{ // installed path → file in the repository
		"share/bash-completion/completions/herd":    "completions/herd.bash",
		"share/zsh/site-functions/_herd":            "completions/herd.zsh",
		"share/fish/vendor_completions.d/herd.fish": "completions/herd.fish",
	}
	pages := readManPages(t, filepath.Join(repo, "man"))
	if len(pages) == 0 {
		t.Fatal("no man pages in man/: run make man")
	}
	for name := range pages {
		installed["share/man/man1/"+name] = "man/" + name
	}
	for path, from := range installed {
		got, err := os.ReadFile(filepath.Join(usr, path))
		if err != nil {
			t.Errorf("not installed: %v", err)
			continue
		}
		if want, err := os.ReadFile(filepath.Join(repo, from)); err != nil || string(got) != string(want) {
			t.Errorf("%s is not a copy of %s (%v)", path, from, err)
		}
	}
	// Every installed file, and only those, is there.
	var extra []string
	_ = filepath.WalkDir(usr, func(p string, d os.DirEntry, err error) error {
		rel, _ := filepath.Rel(usr, p)
		if err == nil && !d.IsDir() && installed[rel] == "" && rel != "bin/herd" {
			extra = append(extra, rel)
		}
		return err
	})
	if len(extra) > 0 {
		t.Errorf("make install also installed %q", extra)
	}

	herd := filepath.Join(usr, "bin", "herd")
	if st, err := os.Stat(herd); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("bin/herd: %v, mode %v; want an executable (0755)", err, st)
	}
	if out, err := exec.Command(herd, "version").CombinedOutput(); err != nil || !strings.Contains(string(out), "herd") {
		t.Errorf("installed herd version: %v\n%s", err, out)
	}

	man, manErr := exec.LookPath("man")
	if manErr != nil && inCI {
		t.Errorf("CI must provide man (apt package man-db): %v", manErr)
	}
	for name, page := range pages {
		command := strings.TrimSuffix(name, ".1")
		checkManPage(t, command, page)
		if manErr != nil {
			continue
		}
		// man renders the installed page, and groff finds nothing to warn about.
		var stderr strings.Builder
		c := exec.Command(man, "--warnings", "-l", filepath.Join(usr, "share/man/man1", name))
		c.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat", "PAGER=cat")
		c.Stderr = &stderr
		out, err := c.Output()
		words := strings.Join(strings.Fields(string(out)), " ") // man justifies lines with extra spaces
		if err != nil || stderr.Len() > 0 || !strings.Contains(words, "NAME "+command+" - ") {
			t.Errorf("man -l %s: %v\n%s\n%.300s", name, err, stderr.String(), out)
		}
	}
}
