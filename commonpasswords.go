package main

import (
	_ "embed"
	"slices"
	"strings"
)

// Refusing new passwords that are easy to guess (OWASP ASVS 2.1.7): those on a list of common
// passwords, and the account's own username or email. Every path that sets a password calls
// checkGuessable.

// commonPasswordsFile is common-passwords.txt, which scripts/common-passwords.sh makes from a
// pinned npm package: lowercase, one a line, sorted bytewise, no duplicates.
//
//go:embed common-passwords.txt
var commonPasswordsFile string

// commonPasswords is the list, sorted for binary search: about 16 comparisons a lookup. Its
// strings point into the embedded file, so loading it allocates only the slice.
type commonPasswords []string

// loadCommonPasswords splits the embedded list, once at start (loadConfig).
func loadCommonPasswords() commonPasswords {
	return strings.Split(strings.TrimSuffix(commonPasswordsFile, "\n"), "\n")
}

// commonPasswordsIf returns the list when the check is on (PASSWORD_CHECK_COMMON, by default),
// and nil otherwise.
func commonPasswordsIf(on bool) commonPasswords {
	if !on {
		return nil
	}
	return loadCommonPasswords()
}

// contains reports whether password, lowercased, is on the list; a nil list (the check turned
// off) contains nothing.
func (c commonPasswords) contains(password string) bool {
	_, found := slices.BinarySearch(c, strings.ToLower(password))
	return found
}

// checkGuessable records under field, in problems, why password may not be chosen: it is
// the account's username or email (any of personal, ignoring case), or it is on common. A
// field with a problem already (too short, say) keeps that one. It returns problems.
func checkGuessable(problems map[string]string, field, password string, common commonPasswords, personal ...string) map[string]string {
	if _, ok := problems[field]; ok {
		return problems
	}
	for _, p := range personal {
		// The first thing an attacker who knows the account tries.
		if p != "" && strings.EqualFold(password, p) {
			problems[field] = "must not be your username or email"
			return problems
		}
	}
	// The first thing an attacker who does not know the account tries: a spray of the most
	// common passwords across many accounts stays under every per-account lockout.
	if common.contains(password) {
		problems[field] = "is too common; choose another"
	}
	return problems
}
