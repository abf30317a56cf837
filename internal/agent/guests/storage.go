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

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/libvirtconn"
)

// isoTimeout bounds genisoimage, which writes a few KiB.
const isoTimeout = 30 * time.Second

// outputCap bounds what a command's output adds to an error.
const outputCap = 4 << 10

// EnsureVolumes creates the node's volumes in its pool where they are
// missing: the overlay <name>.qcow2 backed by the base image, and the seed,
// <name>-cidata.iso for cloud-init or <name>.ign for Ignition. Existing
// volumes are kept as they are.
func EnsureVolumes(conn *libvirt.Libvirt, n Node) error {
	if err := n.Validate(); err != nil {
		return err
	}
	pool, err := activePool(conn, n.Pool)
	if err != nil {
		return fmt.Errorf("ensure volumes of node %q: %w", n.Name, err)
	}
	if err := ensureOverlay(conn, pool, n); err != nil {
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

func activePool(conn *libvirt.Libvirt, name string) (libvirt.StoragePool, error) {
	pool, err := conn.StoragePoolLookupByName(name)
	if err != nil {
		return pool, fmt.Errorf("look up storage pool %q: %w", name, err)
	}
	active, err := conn.StoragePoolIsActive(pool)
	if err != nil {
		return pool, fmt.Errorf("storage pool %q: %w", name, err)
	}
	if active == 0 {
		return pool, fmt.Errorf("storage pool %q is not active", name)
	}
	return pool, nil
}

// lookupVolume returns the named volume, and false when the pool has none.
func lookupVolume(conn *libvirt.Libvirt, pool libvirt.StoragePool, name string) (libvirt.StorageVol, bool, error) {
	vol, err := conn.StorageVolLookupByName(pool, name)
	if isCode(err, libvirt.ErrNoStorageVol) {
		return vol, false, nil
	}
	if err != nil {
		return vol, false, fmt.Errorf("look up volume %q: %w", name, err)
	}
	return vol, true, nil
}

func ensureOverlay(conn *libvirt.Libvirt, pool libvirt.StoragePool, n Node) error {
	name := overlayVolume(n.Name)
	_, found, err := lookupVolume(conn, pool, name)
	if err != nil || found {
		return err
	}
	base, found, err := lookupVolume(conn, pool, n.BaseImage)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("base image: no volume %q in pool %q", n.BaseImage, n.Pool)
	}
	baseXML, err := conn.StorageVolGetXMLDesc(base, 0)
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
	if _, err := conn.StorageVolCreateXML(pool, s, 0); err != nil {
		return fmt.Errorf("create overlay volume %q on %q: %w", name, n.BaseImage, err)
	}
	return nil
}

// ensureUploaded creates a raw volume with the content made by content,
// unless the volume exists. The volume is created only readable by its
// owner: a seed may carry secrets (join tokens), and libvirt gives the
// running QEMU access to its disks and fw_cfg files itself.
func ensureUploaded(conn *libvirt.Libvirt, pool libvirt.StoragePool, name string, content func() ([]byte, error)) error {
	_, found, err := lookupVolume(conn, pool, name)
	if err != nil || found {
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
	vol, err := conn.StorageVolCreateXML(pool, s, 0)
	if err != nil {
		return fmt.Errorf("create volume %q: %w", name, err)
	}
	// A libvirt stream, which works on a remote connection as well as a
	// local one.
	if err := conn.StorageVolUpload(vol, bytes.NewReader(data), 0, uint64(len(data)), 0); err != nil {
		// A half-written seed must not pass for an existing one next time.
		if derr := conn.StorageVolDelete(vol, 0); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete it again: %w", derr))
		}
		return fmt.Errorf("upload volume %q: %w", name, err)
	}
	return nil
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
func deleteVolumes(conn *libvirt.Libvirt, pool libvirt.StoragePool, names ...string) error {
	for _, name := range names {
		vol, found, err := lookupVolume(conn, pool, name)
		if err != nil {
			return err
		}
		if !found {
			continue
		}
		err = conn.StorageVolDelete(vol, 0)
		if isCode(err, libvirt.ErrNoStorageVol) {
			continue // deleted meanwhile: what Delete wants
		}
		if err != nil {
			return fmt.Errorf("delete volume %q: %w", name, err)
		}
	}
	return nil
}

func isCode(err error, code libvirt.ErrorNumber) bool { return libvirtconn.IsCode(err, code) }
