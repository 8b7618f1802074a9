package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
)

// A write that gives a user a taken username and a taken email is refused naming both, however
// the two are taken (by one user or two, in any case), and whichever index fails first.

// takenFieldsOf returns the sorted fields of a conflict error and its message.
func takenFieldsOf(err error) ([]string, string) {
	var ce *clientError
	if !errors.As(err, &ce) || !errors.Is(err, errConflict) {
		return nil, fmt.Sprint(err)
	}
	fields := make([]string, 0, len(ce.fields))
	for f := range ce.fields {
		fields = append(fields, f)
	}
	slices.Sort(fields)
	return fields, ce.message
}

func TestTakenFieldsAreAllNamed(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	env.addUser(t, "alice", roleUser)
	env.addUser(t, "bob", roleUser)
	both, username, email := []string{"email", "username"}, []string{"username"}, []string{"email"}
	tests := []struct {
		name, username, email string
		fields                []string
		message               string
	}{
		{"both of one user", "alice", "alice@example.com", both, "Username and email already exist"},
		{"both of one user, in another case", "ALICE", "Alice@EXAMPLE.com", both, "Username and email already exist"},
		{"one of each of two users", "alice", "bob@example.com", both, "Username and email already exist"},
		{"the other way round", "bob", "ALICE@example.com", both, "Username and email already exist"},
		{"only the username", "Bob", "new1@example.com", username, "Username already exists"},
		{"only the email", "new2", "bob@example.com", email, "Email already exists"},
	}
	for _, tt := range tests {
		t.Run("register: "+tt.name, func(t *testing.T) {
			b := registerBody(tt.username)
			b["email"] = tt.email
			r := env.do(t, "POST", "/api/auth/register", "", b).expect(t, http.StatusConflict)
			if got := errorFields(t, r); !slices.Equal(got, tt.fields) || r.message(t) != tt.message {
				t.Errorf("errors %v, message %q; want %v, %q", got, r.message(t), tt.fields, tt.message)
			}
		})
		t.Run("create-admin: "+tt.name, func(t *testing.T) {
			_, err := env.st.createFirstAdmin(context.Background(), newUser{tt.username, "R", "Oot", tt.email}, "x")
			if fields, message := takenFieldsOf(err); !slices.Equal(fields, tt.fields) || message != tt.message {
				t.Errorf("errors %v, message %q; want %v, %q", fields, message, tt.fields, tt.message)
			}
		})
	}

	carol := env.addUser(t, "carol", roleUser)
	carolToken := env.tokenFor(t, carol)
	updates := []struct {
		name   string
		patch  map[string]any
		fields []string
	}{
		{"both taken", map[string]any{"username": "alice", "email": "bob@example.com"}, both},
		{"one taken, the other her own", map[string]any{"username": "ALICE", "email": "carol@example.com"}, username},
		{"her own username, a taken email", map[string]any{"username": "Carol", "email": "alice@example.com"}, email},
		{"a taken email alone", map[string]any{"email": "bob@example.com"}, email},
	}
	for _, tt := range updates {
		t.Run("update: "+tt.name, func(t *testing.T) {
			r := env.do(t, "PATCH", fmt.Sprintf("/api/users/%d", carol.ID), carolToken, tt.patch).expect(t, http.StatusConflict)
			if got := errorFields(t, r); !slices.Equal(got, tt.fields) {
				t.Errorf("errors %v, want %v; body: %s", got, tt.fields, r.body)
			}
		})
	}
}

// TestTakenFieldsUnderRaces: of registrations racing for one username and email, one wins, and
// every other is told both are taken.
func TestTakenFieldsUnderRaces(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	const racers = 8
	for round := range 4 {
		start := make(chan struct{})
		errs := make([]error, racers)
		var wg sync.WaitGroup
		for i := range racers {
			name := fmt.Sprintf("racer%d", round)
			if i%2 == 1 {
				name = strings.ToUpper(name)
			}
			wg.Go(func() {
				<-start
				_, errs[i] = env.st.createUser(context.Background(), newUser{name, "R", "Acer", name + "@example.com"}, "x")
			})
		}
		close(start)
		wg.Wait()
		created := 0
		for i, err := range errs {
			if err == nil {
				created++
				continue
			}
			if fields, message := takenFieldsOf(err); !slices.Equal(fields, []string{"email", "username"}) {
				t.Errorf("round %d: racer %d: %v %q, want a conflict naming both fields", round, i, fields, message)
			}
		}
		if created != 1 {
			t.Errorf("round %d: %d created, want 1", round, created)
		}
	}
}
