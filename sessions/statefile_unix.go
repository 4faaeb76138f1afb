//go:build unix

package sessions

import (
	"io/fs"
	"syscall"
)

// fileOwner returns the uid of the file's owner.
func fileOwner(fi fs.FileInfo) (int, bool) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), true
	}
	return 0, false
}
