package guests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// isoTimeout bounds genisoimage, which writes a few KiB.
const isoTimeout = 30 * time.Second

// outputCap bounds what a command's output adds to an error.
const outputCap = 4 << 10

// EnsureVolumes creates the node's volumes in its pool where they are
// missing: the overlay <name>.qcow2 backed by the base image, and the seed,
// <name>-cidata.iso for cloud-init or <name>.ign for Ignition. Existing
// volumes are kept as they are.
func EnsureVolumes(conn *libvirt.Connect, n Node) error {
	if err := n.Validate(); err != nil {
		return err
	}
	pool, err := activePool(conn, n.Pool)
	if err != nil {
		return fmt.Errorf("ensure volumes of node %q: %w", n.Name, err)
	}
	defer pool.Free()
	if err := ensureOverlay(pool, n); err != nil {
		return fmt.Errorf("ensure volumes of node %q: %w", n.Name, err)
	}
	if n.Ignition != "" {
		err = ensureUploaded(conn, pool, ignitionVolume(n.Name), func() ([]byte, error) { return []byte(n.Ignition), nil })
	} else {
		err = ensureUploaded(conn, pool, seedVolume(n.Name), func() ([]byte, error) { return seedISO(n.UserData, n.metaData()) })
	}
	if err != nil {
		return fmt.Errorf("ensure volumes of node %q: %w", n.Name, err)
	}
	return nil
}

func activePool(conn *libvirt.Connect, name string) (*libvirt.StoragePool, error) {
	pool, err := conn.LookupStoragePoolByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up storage pool %q: %w", name, err)
	}
	active, err := pool.IsActive()
	if err != nil {
		pool.Free()
		return nil, fmt.Errorf("storage pool %q: %w", name, err)
	}
	if !active {
		pool.Free()
		return nil, fmt.Errorf("storage pool %q is not active", name)
	}
	return pool, nil
}

// lookupVolume returns the named volume, or nil when the pool has none.
func lookupVolume(pool *libvirt.StoragePool, name string) (*libvirt.StorageVol, error) {
	vol, err := pool.LookupStorageVolByName(name)
	if isCode(err, libvirt.ERR_NO_STORAGE_VOL) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up volume %q: %w", name, err)
	}
	return vol, nil
}

func ensureOverlay(pool *libvirt.StoragePool, n Node) error {
	name := overlayVolume(n.Name)
	vol, err := lookupVolume(pool, name)
	if err != nil || vol != nil {
		if vol != nil {
			vol.Free()
		}
		return err
	}
	base, err := lookupVolume(pool, n.BaseImage)
	if err != nil {
		return err
	}
	if base == nil {
		return fmt.Errorf("base image: no volume %q in pool %q", n.BaseImage, n.Pool)
	}
	defer base.Free()
	baseXML, err := base.GetXMLDesc(0)
	if err != nil {
		return fmt.Errorf("read base image volume %q: %w", n.BaseImage, err)
	}
	var bv libvirtxml.StorageVolume
	if err := bv.Unmarshal(baseXML); err != nil {
		return fmt.Errorf("read base image volume %q: %w", n.BaseImage, err)
	}
	if bv.Target == nil || bv.Target.Path == "" || bv.Target.Format == nil {
		return fmt.Errorf("base image volume %q: no path or format in its definition", n.BaseImage)
	}
	s, err := (&libvirtxml.StorageVolume{
		Name:     name,
		Capacity: &libvirtxml.StorageVolumeSize{Value: n.DiskBytes, Unit: "bytes"},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
		BackingStore: &libvirtxml.StorageVolumeBackingStore{
			Path:   bv.Target.Path,
			Format: &libvirtxml.StorageVolumeTargetFormat{Type: bv.Target.Format.Type},
		},
	}).Marshal()
	if err != nil {
		return fmt.Errorf("encode volume %q: %w", name, err)
	}
	created, err := pool.StorageVolCreateXML(s, 0)
	if err != nil {
		return fmt.Errorf("create overlay volume %q on %q: %w", name, n.BaseImage, err)
	}
	created.Free()
	return nil
}

// ensureUploaded creates a raw volume with the content made by content,
// unless the volume exists. The volume is created only readable by its
// owner: a seed may carry secrets (join tokens), and libvirt gives the
// running QEMU access to its disks and fw_cfg files itself.
func ensureUploaded(conn *libvirt.Connect, pool *libvirt.StoragePool, name string, content func() ([]byte, error)) error {
	vol, err := lookupVolume(pool, name)
	if err != nil || vol != nil {
		if vol != nil {
			vol.Free()
		}
		return err
	}
	data, err := content()
	if err != nil {
		return err
	}
	s, err := (&libvirtxml.StorageVolume{
		Name:     name,
		Capacity: &libvirtxml.StorageVolumeSize{Value: uint64(len(data)), Unit: "bytes"},
		Target: &libvirtxml.StorageVolumeTarget{
			Format:      &libvirtxml.StorageVolumeTargetFormat{Type: "raw"},
			Permissions: &libvirtxml.StorageVolumeTargetPermissions{Mode: "0600"},
		},
	}).Marshal()
	if err != nil {
		return fmt.Errorf("encode volume %q: %w", name, err)
	}
	vol, err = pool.StorageVolCreateXML(s, 0)
	if err != nil {
		return fmt.Errorf("create volume %q: %w", name, err)
	}
	defer vol.Free()
	if err := upload(conn, vol, data); err != nil {
		// A half-written seed must not pass for an existing one next time.
		if derr := vol.Delete(0); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete it again: %w", derr))
		}
		return fmt.Errorf("upload volume %q: %w", name, err)
	}
	return nil
}

// upload writes data over the volume through a libvirt stream, which works
// on a remote connection as well as a local one.
func upload(conn *libvirt.Connect, vol *libvirt.StorageVol, data []byte) error {
	st, err := conn.NewStream(0)
	if err != nil {
		return err
	}
	defer st.Free()
	if err := vol.Upload(st, 0, uint64(len(data)), 0); err != nil {
		return err
	}
	for off := 0; off < len(data); {
		n, err := st.Send(data[off:])
		if err != nil {
			_ = st.Abort()
			return err
		}
		off += n
	}
	return st.Finish()
}

// seedISO builds a NoCloud seed: an ISO 9660 image labelled "cidata" with
// the files user-data and meta-data, with Joliet and Rock Ridge names so
// that the lowercase, dashed names survive. It runs genisoimage (Debian
// package genisoimage), as cloud-localds does.
func seedISO(userData, metaData string) ([]byte, error) {
	tool, err := exec.LookPath("genisoimage")
	if err != nil {
		return nil, fmt.Errorf("build cloud-init seed: genisoimage (Debian package genisoimage) is needed: %w", err)
	}
	dir, err := os.MkdirTemp("", "caretaker-cidata-")
	if err != nil {
		return nil, fmt.Errorf("build cloud-init seed: %w", err)
	}
	defer os.RemoveAll(dir)
	files := []string{filepath.Join(dir, "user-data"), filepath.Join(dir, "meta-data")}
	for i, content := range []string{userData, metaData} {
		if err := os.WriteFile(files[i], []byte(content), 0o600); err != nil {
			return nil, fmt.Errorf("build cloud-init seed: %w", err)
		}
	}
	out := filepath.Join(dir, "cidata.iso")
	ctx, cancel := context.WithTimeout(context.Background(), isoTimeout)
	defer cancel()
	args := append([]string{"-output", out, "-volid", "cidata", "-joliet", "-rock", "-quiet"}, files...)
	cmd := exec.CommandContext(ctx, tool, args...)
	var msg cappedBuffer
	cmd.Stdout, cmd.Stderr = &msg, &msg
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("build cloud-init seed: genisoimage: %w: %s", err, bytes.TrimSpace(msg.Bytes()))
	}
	iso, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("build cloud-init seed: %w", err)
	}
	return iso, nil
}

// cappedBuffer keeps the first outputCap bytes written to it.
type cappedBuffer struct{ bytes.Buffer }

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := outputCap - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// deleteVolumes deletes the node's volumes that exist in pool.
func deleteVolumes(pool *libvirt.StoragePool, names ...string) error {
	for _, name := range names {
		vol, err := lookupVolume(pool, name)
		if err != nil {
			return err
		}
		if vol == nil {
			continue
		}
		err = vol.Delete(0)
		vol.Free()
		var lerr libvirt.Error
		if errors.As(err, &lerr) && lerr.Code == libvirt.ERR_NO_STORAGE_VOL {
			continue // deleted meanwhile: what Delete wants
		}
		if err != nil {
			return fmt.Errorf("delete volume %q: %w", name, err)
		}
	}
	return nil
}

func isCode(err error, code libvirt.ErrorNumber) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == code
}
