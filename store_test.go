package main

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestSchemaAppliedOnceAndUpgraded: instances starting together on an empty database all
// succeed; a start on an up-to-date database runs no DDL; a database of an earlier version is
// brought up to date.
func TestSchemaAppliedOnceAndUpgraded(t *testing.T) {
	t.Parallel()
	url := newTestDatabase(t)
	ctx := context.Background()
	open := func() *store {
		st, err := openStore(ctx, url, newKeySet([]byte("store-test-secret-store-test-secret-0123"), nil), time.Now, 10*time.Second)
		if err != nil {
			t.Fatalf("opening store: %v", err)
		}
		t.Cleanup(st.close)
		return st
	}
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
