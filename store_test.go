package main

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSchemaAppliedOnceAndUpgraded: instances starting together on an empty database all
// succeed; a start on an up-to-date database runs no DDL; a database of an earlier version is
// brought up to date.
// openTestStore opens a store on the database at url, as a server's start does (applying the
// schema when it is not current), closed when the test ends.
func openTestStore(t *testing.T, url string) *store {
	t.Helper()
	st, err := openStore(context.Background(), testConfig(url), time.Now, 10*time.Second)
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(st.close)
	return st
}

func TestSchemaAppliedOnceAndUpgraded(t *testing.T) {
	t.Parallel()
	url := newTestDatabase(t)
	ctx := context.Background()
	open := func() *store { return openTestStore(t, url) }
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { open() })
	}
	wg.Wait()

	st := open()
	var appliedAt time.Time
	if err := st.pool.QueryRow(ctx, "SELECT applied_at FROM schema_version").Scan(&appliedAt); err != nil {
		t.Fatal(err)
	}
	open()
	var again time.Time
	if err := st.pool.QueryRow(ctx, "SELECT applied_at FROM schema_version").Scan(&again); err != nil {
		t.Fatal(err)
	}
	if !again.Equal(appliedAt) {
		t.Errorf("an up-to-date schema was applied again (at %v, first at %v)", again, appliedAt)
	}

	// An earlier version: no email_verified column, another digest.
	if _, err := st.pool.Exec(ctx, "ALTER TABLE users DROP COLUMN email_verified; UPDATE schema_version SET digest = 'earlier'"); err != nil {
		t.Fatal(err)
	}
	open()
	var exists bool
	err := st.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_name = 'users' AND column_name = 'email_verified')`).Scan(&exists)
	if err != nil || !exists {
		t.Fatalf("email_verified column after the upgrade: %v, %v", exists, err)
	}
}

// TestSchemaUpgradeFoldsASCII: a database of an earlier version, with the unique indexes on
// plain lower() and a verified non-ASCII address, gets the ASCII-folding indexes in their
// place, and that address is no longer counted as verified; an ASCII one keeps its mark.
func TestSchemaUpgradeFoldsASCII(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	ctx := context.Background()
	_, err := env.st.pool.Exec(ctx, `DROP INDEX users_username_ascii_key, users_email_ascii_key, mail_outbox_recipient_ascii_idx;
		CREATE UNIQUE INDEX users_username_key ON users (lower(username));
		CREATE UNIQUE INDEX users_email_key ON users (lower(email));
		CREATE INDEX mail_outbox_recipient_idx ON mail_outbox (lower(recipient), created_at);
		INSERT INTO users (username, first_name, last_name, email, password_hash, email_verified) VALUES
			('liz', 'Liz', 'L', 'l' || U&'\0130' || 'z@example.com', 'x', true),
			('stan', 'Stan', 'S', 'stan@example.com', 'x', true);
		UPDATE schema_version SET digest = 'earlier'`)
	if err != nil {
		t.Fatal(err)
	}
	st, err := openStore(ctx, env.cfg, time.Now, 10*time.Second)
	if err != nil {
		t.Fatalf("upgrading: %v", err)
	}
	st.close()
	var indexes []string
	err = env.st.pool.QueryRow(ctx, `SELECT array_agg(indexname::text || ' ' || indexdef ORDER BY indexname) FROM pg_indexes
		WHERE indexname LIKE 'users\_%\_key' OR indexname LIKE 'mail\_outbox\_recipient%'`).Scan(&indexes)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`mail_outbox_recipient_ascii_idx CREATE INDEX mail_outbox_recipient_ascii_idx ON public.mail_outbox USING btree (lower((recipient COLLATE "C")), created_at)`,
		`users_email_ascii_key CREATE UNIQUE INDEX users_email_ascii_key ON public.users USING btree (lower((email COLLATE "C")))`,
		`users_username_ascii_key CREATE UNIQUE INDEX users_username_ascii_key ON public.users USING btree (lower((username COLLATE "C")))`,
	}
	if !slices.Equal(indexes, want) {
		t.Errorf("indexes after the upgrade:\n%s\nwant\n%s", strings.Join(indexes, "\n"), strings.Join(want, "\n"))
	}
	for username, verified := range map[string]bool{"liz": false, "stan": true} {
		u, err := env.st.userByLogin(ctx, username)
		if err != nil || u.EmailVerified != verified {
			t.Errorf("%s after the upgrade: email_verified %v (%v), want %v", username, u.EmailVerified, err, verified)
		}
	}
}

// TestSchemaUpgradeCountsUsers: a database of a version before user_id_blocks, with users in
// it, gets their counts once when the schema is applied; the counts then follow inserts and
// deletes, and applying the schema again does not count anyone twice.
func TestSchemaUpgradeCountsUsers(t *testing.T) {
	t.Parallel()
	url := newTestDatabase(t)
	ctx := context.Background()
	open := func() *store { return openTestStore(t, url) }
	st := open()
	exec := func(sql string) {
		t.Helper()
		if _, err := st.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	counted := func(when string) {
		t.Helper()
		var users, blocks int
		err := st.pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM users), (SELECT coalesce(sum(users), 0) FROM user_id_blocks)").
			Scan(&users, &blocks)
		if err != nil || users != blocks {
			t.Fatalf("%s: %d users, %d counted (%v)", when, users, blocks, err)
		}
	}
	// The earlier version: users, and no counts or triggers.
	exec(`DROP TABLE user_id_blocks CASCADE; DROP FUNCTION count_user_id_blocks() CASCADE;
		INSERT INTO users (username, first_name, last_name, email, password_hash)
		SELECT 'c' || i, 'F', 'L', 'c' || i || '@example.com', 'not-a-hash' FROM generate_series(1, 2500) AS i;
		UPDATE schema_version SET digest = 'earlier'`)
	open()
	counted("after the upgrade")
	exec("DELETE FROM users WHERE id % 3 = 0")
	exec(`INSERT INTO users (username, first_name, last_name, email, password_hash) VALUES ('late', 'F', 'L', 'late@example.com', '')`)
	counted("after deletes and an insert")
	exec("UPDATE schema_version SET digest = 'earlier'")
	open()
	counted("after the schema was applied again")
}
