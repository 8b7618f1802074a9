package main

import "testing"

func TestSmoke(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	alice := env.addUser(t, "alice", roleUser)
	env.do(t, "GET", "/api/users/me", env.tokenFor(t, alice), nil).expect(t, 200)
	env.login(t, "alice", testPassword)
}
