package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.org/x/term"
)

// The -create-admin command: the first admin, from flags, piped input or a terminal prompt.

// runCreateAdmin creates the first admin. Values not given as flags are asked for in the order
// username, password, email, first name, last name: at a terminal with prompts (the password
// hidden and asked twice), otherwise read one per line from stdin.
func runCreateAdmin(ctx context.Context, cfg config, st *store, admin newUser, stdin io.Reader, stdout io.Writer) error {
	p := newPrompter(stdin, stdout)
	var password string
	var err error
	steps := []struct {
		label string
		value *string
	}{
		{"Username", &admin.Username},
		{"Password", nil},
		{"Email", &admin.Email},
		{"First name", &admin.FirstName},
		{"Last name", &admin.LastName},
	}
	for _, step := range steps {
		switch {
		case step.value == nil:
			password, err = p.ask(ctx, p.password)
		case *step.value == "":
			*step.value, err = p.ask(ctx, func() (string, error) { return p.line(step.label) })
		}
		if err != nil {
			return fmt.Errorf("create admin: reading %s: %w", strings.ToLower(step.label), err)
		}
	}
	req := registerRequest{admin.Username, admin.FirstName, admin.LastName, admin.Email, password}
	if problems := req.valid(cfg.passwordMinLength, cfg.commonPasswords); len(problems) > 0 {
		return fmt.Errorf("create admin: %s", describeProblems(problems))
	}
	hash, err := newHasher(cfg.bcryptCost, 1).hash(ctx, password)
	if err != nil {
		return fmt.Errorf("create admin: %w", err)
	}
	id, err := st.createFirstAdmin(ctx, admin, hash)
	if err != nil {
		var ce *clientError
		if errors.As(err, &ce) {
			return fmt.Errorf("create admin: %s", ce.message)
		}
		return fmt.Errorf("create admin: %w", err)
	}
	fmt.Fprintf(stdout, "Admin %q created with id %d.\n", admin.Username, id)
	return nil
}

// describeProblems renders validation problems as "field reason; field reason".
func describeProblems(problems map[string]string) string {
	lines := make([]string, 0, len(problems))
	for field, reason := range problems {
		lines = append(lines, field+" "+reason)
	}
	sort.Strings(lines)
	return strings.Join(lines, "; ")
}

// prompter asks for values at a terminal, or reads them line by line from a pipe or file.
type prompter struct {
	in       *bufio.Reader
	out      io.Writer
	terminal int         // the terminal's file descriptor, or -1
	state    *term.State // the terminal's settings before any prompt
}

func newPrompter(stdin io.Reader, stdout io.Writer) *prompter {
	p := &prompter{in: bufio.NewReader(stdin), out: stdout, terminal: -1}
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.terminal = int(f.Fd())
		p.state, _ = term.GetState(p.terminal)
	}
	return p
}

// ask runs read but gives up when ctx is done (Ctrl-C at a prompt): a read blocked on a
// terminal cannot be interrupted, so it is left behind, and the terminal gets its settings
// back (echo, if a password prompt had turned it off) before the program exits.
func (p *prompter) ask(ctx context.Context, read func() (string, error)) (string, error) {
	type answer struct {
		value string
		err   error
	}
	answered := make(chan answer, 1)
	go func() {
		value, err := read()
		answered <- answer{value, err}
	}()
	select {
	case a := <-answered:
		return a.value, a.err
	case <-ctx.Done():
		if p.state != nil {
			_ = term.Restore(p.terminal, p.state)
			fmt.Fprintln(p.out)
		}
		return "", ctx.Err()
	}
}

func (p *prompter) line(label string) (string, error) {
	if p.terminal >= 0 {
		fmt.Fprintf(p.out, "%s: ", label)
	}
	s, err := p.in.ReadString('\n')
	if errors.Is(err, io.EOF) && s != "" {
		err = nil
	}
	if errors.Is(err, io.EOF) {
		return "", errors.New("no more input")
	}
	return strings.TrimRight(s, "\r\n"), err
}

// password reads a password without echo at a terminal, asking twice to catch typos.
func (p *prompter) password() (string, error) {
	if p.terminal < 0 {
		return p.line("Password")
	}
	read := func(label string) (string, error) {
		fmt.Fprintf(p.out, "%s: ", label)
		b, err := term.ReadPassword(p.terminal)
		fmt.Fprintln(p.out)
		return string(b), err
	}
	first, err := read("Password")
	if err != nil {
		return "", err
	}
	second, err := read("Password (again)")
	if err != nil {
		return "", err
	}
	if first != second {
		return "", errors.New("the passwords do not match")
	}
	return first, nil
}

// createFirstAdmin creates an admin unless one exists already (errConflict). The advisory lock
// keeps two concurrent runs from both succeeding.
func (s *store) createFirstAdmin(ctx context.Context, u newUser, passwordHash string) (int64, error) {
	var id int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(adminLockKey)); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'Admin')").Scan(&exists); err != nil {
			return err
		}
		if exists {
			return fail(errConflict, "An admin already exists; manage users through the API")
		}
		var err error
		// The first admin's address is taken on trust: whoever runs this owns the server.
		if id, err = insertUser(ctx, tx, u, passwordHash, roleAdmin, true); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditAdminCreated, 0, id, map[string]any{"username": u.Username})
	})
	return id, s.takenFields(ctx, err, 0, &u.Username, &u.Email)
}
