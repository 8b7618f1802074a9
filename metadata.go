package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Metadata: user_metadata (the user writes it) and app_metadata (only admins do), JSON
// objects hung on a user. These are their limits and what the audit log says of a change.

const (
	maxMetadataBytes = 8 << 10 // as compact JSON
	maxMetadataKey   = 64      // characters, at every level
	maxMetadataDepth = 5       // the object itself is level 1
)

// normalizeMetadata checks a metadata value and returns it as compact JSON, or what is wrong
// with it. Everything PostgreSQL's jsonb would refuse with an error (a NUL character, a lone
// surrogate, a number beyond its range) is refused or replaced here, so that no write fails
// with a 500.
func normalizeMetadata(raw json.RawMessage) (json.RawMessage, string) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber() // numbers keep their digits
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, "must be a JSON object"
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, "must be a JSON object"
	}
	v, problem := checkMetadataValue(v, 1)
	if problem != "" {
		return nil, problem
	}
	var out bytes.Buffer
	e := json.NewEncoder(&out)
	e.SetEscapeHTML(false)
	if err := e.Encode(v); err != nil { // values decoded from JSON encode again
		return nil, "must be a JSON object"
	}
	compact := bytes.TrimSuffix(out.Bytes(), []byte("\n"))
	if len(compact) > maxMetadataBytes {
		return nil, fmt.Sprintf("must be at most %d bytes as compact JSON", maxMetadataBytes)
	}
	return compact, ""
}

// checkMetadataValue checks v, found at nesting level depth, and what it holds, and returns it
// in the form to store, or what is wrong with it.
func checkMetadataValue(v any, depth int) (any, string) {
	var problem string
	switch v := v.(type) {
	case map[string]any:
		if depth > maxMetadataDepth {
			return nil, fmt.Sprintf("must nest at most %d levels", maxMetadataDepth)
		}
		for key, inner := range v {
			if utf8.RuneCountInString(key) > maxMetadataKey {
				return nil, fmt.Sprintf("keys must be at most %d characters", maxMetadataKey)
			}
			if problem = stringProblem(key); problem != "" {
				return nil, problem
			}
			if v[key], problem = checkMetadataValue(inner, depth+1); problem != "" {
				return nil, problem
			}
		}
	case []any:
		if depth > maxMetadataDepth {
			return nil, fmt.Sprintf("must nest at most %d levels", maxMetadataDepth)
		}
		for i, inner := range v {
			if v[i], problem = checkMetadataValue(inner, depth+1); problem != "" {
				return nil, problem
			}
		}
	case string:
		return v, stringProblem(v)
	case json.Number:
		// jsonb stores numbers as numeric, whose range is its own (1e-100000 and 0e-20000 are
		// errors): a value within a double's is safe, and all a JSON reader is sure to take.
		// Its digits are kept, but a zero is written 0, whatever its exponent.
		f, err := strconv.ParseFloat(string(v), 64)
		mantissa, _, _ := strings.Cut(strings.ToLower(string(v)), "e")
		switch {
		case err != nil || f == 0 && strings.ContainsAny(mantissa, "123456789"):
			return nil, "numbers must be within the range of a double (about 1e-308 to 1e308)"
		case f == 0:
			return json.Number("0"), ""
		}
	}
	return v, ""
}

// stringProblem refuses the NUL character, which jsonb cannot hold. (Invalid UTF-8 and lone
// surrogates were already replaced by U+FFFD when the JSON was decoded.)
func stringProblem(s string) string {
	if textProblem(s) != "" {
		return "strings and keys must not contain NUL characters"
	}
	return ""
}

// storedMetadataProblem is what is wrong with a metadata object as PostgreSQL returned it once
// written: its compact form may be longer than the one sent (1e300 comes back written out).
func storedMetadataProblem(stored json.RawMessage) string {
	var compact bytes.Buffer
	if err := json.Compact(&compact, stored); err != nil || compact.Len() > maxMetadataBytes {
		return fmt.Sprintf("must be at most %d bytes as compact JSON", maxMetadataBytes)
	}
	return ""
}

// storedMetadataProblems refuses an update whose metadata, as stored, is past its size.
func storedMetadataProblems(p userPatch, stored user) error {
	problems := map[string]string{}
	if p.UserMetadata != nil {
		check(problems, "user_metadata", storedMetadataProblem(stored.UserMetadata))
	}
	if p.AppMetadata != nil {
		check(problems, "app_metadata", storedMetadataProblem(stored.AppMetadata))
	}
	return invalidFields(problems)
}

// changedKeys lists the top-level keys whose values differ between two metadata objects as
// PostgreSQL returns them (jsonb text is canonical, so equal values are equal text): keys
// added, removed or changed, sorted. The audit log records these, never the values.
func changedKeys(before, after json.RawMessage) []string {
	var b, a map[string]json.RawMessage
	_ = json.Unmarshal(before, &b) // both are objects read from jsonb columns
	_ = json.Unmarshal(after, &a)
	var keys []string
	for k, v := range a {
		if old, ok := b[k]; !ok || !bytes.Equal(old, v) {
			keys = append(keys, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
