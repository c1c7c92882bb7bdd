package netns

import (
	"path/filepath"
	"testing"
)

func TestParseLink(t *testing.T) {
	for _, tc := range []struct {
		in  string
		ino uint32
		ok  bool
	}{
		{"net:[4026531840]", 4026531840, true},
		{"net:[]", 0, false},
		{"mnt:[4026531840]", 0, false},
		{"net:[99999999999]", 0, false},
		{"net:[12", 0, false},
	} {
		ino, ok := ParseLink(tc.in)
		if ino != tc.ino || ok != tc.ok {
			t.Errorf("ParseLink(%q) = %d, %v", tc.in, ino, ok)
		}
	}
}

func TestLinkInode(t *testing.T) {
	for _, tc := range []struct {
		in  string
		ino uint64
		ok  bool
	}{
		{"socket:[12345]", 12345, true},
		{"socket:[]", 0, false},
		{"socket:[12", 0, false},
		{"pipe:[12]", 0, false},
		{"/dev/null", 0, false},
	} {
		ino, ok := LinkInode(tc.in, "socket")
		if ino != tc.ino || ok != tc.ok {
			t.Errorf("LinkInode(%q, socket) = %d, %v; want %d, %v", tc.in, ino, ok, tc.ino, tc.ok)
		}
	}
}

func FuzzParseLink(f *testing.F) {
	f.Add("net:[4026531840]")
	f.Add("net:[")
	f.Fuzz(func(t *testing.T, s string) {
		if ino, ok := ParseLink(s); !ok && ino != 0 {
			t.Errorf("ParseLink(%q) = %d with failure", s, ino)
		}
	})
}

func TestScanFindsOwnNamespace(t *testing.T) {
	self, err := Inode("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	found := Scan("/proc", nil)
	p, ok := found[self]
	if !ok {
		t.Fatalf("own namespace %d not found among %d", self, len(found))
	}
	f, err := Open(p, self)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Open("/proc/self/ns/net", self+1); err == nil {
		t.Error("Open accepted a namespace with another inode")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing"), self); err == nil {
		t.Error("Open accepted a missing file")
	}
}
