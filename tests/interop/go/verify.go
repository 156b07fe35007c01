// Checks Beacon's transparency output with another implementation: Go's
// golang.org/x/mod/sumdb/note (the signed note and its Ed25519 signature)
// and golang.org/x/mod/sumdb/tlog (RFC 6962 inclusion and consistency
// proofs). Cosignatures (C2SP tlog-cosignature v1, which note does not
// know) are checked here with crypto/ed25519, from the specification.
//
// Input: a JSON file (see Input) written by tests/it/transparency.rs.
// Prints "ok: ..." and exits 0 when everything verifies; exits 1 naming the
// first thing that does not.
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type Inclusion struct {
	Size      int64    `json:"size"`
	Index     int64    `json:"index"`
	LeafEntry string   `json:"leaf_entry"`
	Hashes    []string `json:"hashes"`
}

type Consistency struct {
	Old     int64    `json:"old"`
	OldRoot string   `json:"old_root"`
	New     int64    `json:"new"`
	Hashes  []string `json:"hashes"`
}

type Input struct {
	LogKey      string        `json:"log_key"`
	Checkpoint  string        `json:"checkpoint"`
	Cosigners   []string      `json:"cosigners"`
	Inclusion   []Inclusion   `json:"inclusion"`
	Consistency []Consistency `json:"consistency"`
	// A proof that must NOT verify (tampered by the test).
	Tampered *Inclusion `json:"tampered"`
	// Receipts in the C2SP tlog-proof form, each checked on its own
	// checkpoint (signed by log_key), with its extra line as the entry.
	Receipts []string `json:"receipts"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func hash(s string) tlog.Hash {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 32 {
		fail("bad hash %q", s)
	}
	var h tlog.Hash
	copy(h[:], b)
	return h
}

func hashes(v []string) []tlog.Hash {
	out := make([]tlog.Hash, len(v))
	for i, s := range v {
		out[i] = hash(s)
	}
	return out
}

// cosigned checks a tlog-cosignature/v1 line of vkey over the note's text.
func cosigned(vkey, text string, sigs []note.Signature) (uint64, bool) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		fail("bad cosigner key %q", vkey)
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 33 || raw[0] != 0x04 {
		fail("cosigner key %q is not an Ed25519 cosignature key", vkey)
	}
	id, _ := strconv.ParseUint(parts[1], 16, 32)
	// The key id, as signed-note defines it.
	sum := sha256.Sum256(append([]byte(parts[0]+"\n"), raw...))
	if binary.BigEndian.Uint32(sum[:4]) != uint32(id) {
		fail("cosigner key %q: the id does not match the key", vkey)
	}
	for _, s := range sigs {
		if s.Name != parts[0] || s.Hash != uint32(id) {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(s.Base64)
		if err != nil || len(b) != 4+8+64 {
			return 0, false
		}
		t := binary.BigEndian.Uint64(b[4:12])
		msg := fmt.Sprintf("cosignature/v1\ntime %d\n%s", t, text)
		return t, ed25519.Verify(ed25519.PublicKey(raw[1:]), []byte(msg), b[12:])
	}
	return 0, false
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: verify input.json")
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	var in Input
	if err := json.Unmarshal(data, &in); err != nil {
		fail("input: %v", err)
	}
	v, err := note.NewVerifier(in.LogKey)
	if err != nil {
		fail("log key: %v", err)
	}
	n, err := note.Open([]byte(in.Checkpoint), note.VerifierList(v))
	if err != nil {
		fail("checkpoint: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(n.Text, "\n"), "\n")
	if len(lines) < 3 {
		fail("checkpoint text has %d lines", len(lines))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size %q", lines[1])
	}
	root := hash(lines[2])
	for _, c := range in.Cosigners {
		if _, ok := cosigned(c, n.Text, n.UnverifiedSigs); !ok {
			fail("no valid cosignature by %s", c)
		}
	}
	for _, p := range in.Inclusion {
		if p.Size != size {
			fail("inclusion proof at %d, checkpoint of %d", p.Size, size)
		}
		entry, err := base64.StdEncoding.DecodeString(p.LeafEntry)
		if err != nil {
			fail("leaf entry: %v", err)
		}
		if err := tlog.CheckRecord(hashes(p.Hashes), size, root, p.Index, tlog.RecordHash(entry)); err != nil {
			fail("inclusion of %d in %d: %v", p.Index, size, err)
		}
	}
	for _, c := range in.Consistency {
		if c.New != size {
			fail("consistency proof to %d, checkpoint of %d", c.New, size)
		}
		if err := tlog.CheckTree(hashes(c.Hashes), size, root, c.Old, hash(c.OldRoot)); err != nil {
			fail("consistency %d → %d: %v", c.Old, size, err)
		}
	}
	if t := in.Tampered; t != nil {
		entry, _ := base64.StdEncoding.DecodeString(t.LeafEntry)
		if tlog.CheckRecord(hashes(t.Hashes), size, root, t.Index, tlog.RecordHash(entry)) == nil {
			fail("a tampered inclusion proof verified")
		}
	}
	for i, text := range in.Receipts {
		checkReceipt(i, text, v)
	}
	fmt.Printf("ok: %d receipts; ", len(in.Receipts))
	fmt.Printf("%s at %d entries, %d inclusion and %d consistency proofs, %d cosignatures\n",
		lines[0], size, len(in.Inclusion), len(in.Consistency), len(in.Cosigners))
}

// checkReceipt parses a c2sp.org/tlog-proof@v1 text as its specification
// reads, and checks the checkpoint's signature and the inclusion of the entry
// carried as extra data.
func checkReceipt(i int, text string, v note.Verifier) {
	head, cp, ok := strings.Cut(text, "\n\n")
	if !ok {
		fail("receipt %d: no blank line", i)
	}
	lines := strings.Split(head, "\n")
	if lines[0] != "c2sp.org/tlog-proof@v1" {
		fail("receipt %d: header %q", i, lines[0])
	}
	lines = lines[1:]
	var entry []byte
	if len(lines) > 0 && strings.HasPrefix(lines[0], "extra ") {
		var err error
		entry, err = base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[0], "extra "))
		if err != nil {
			fail("receipt %d: extra: %v", i, err)
		}
		lines = lines[1:]
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "index ") {
		fail("receipt %d: no index", i)
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(lines[0], "index "), 10, 64)
	if err != nil {
		fail("receipt %d: index: %v", i, err)
	}
	n, err := note.Open([]byte(cp), note.VerifierList(v))
	if err != nil {
		fail("receipt %d: checkpoint: %v", i, err)
	}
	cl := strings.Split(strings.TrimSuffix(n.Text, "\n"), "\n")
	size, err := strconv.ParseInt(cl[1], 10, 64)
	if err != nil {
		fail("receipt %d: size: %v", i, err)
	}
	if err := tlog.CheckRecord(hashes(lines[1:]), size, hash(cl[2]), index, tlog.RecordHash(entry)); err != nil {
		fail("receipt %d: inclusion of %d in %d: %v", i, index, size, err)
	}
}
