package kubelab

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"time"
)

// Image is a container image of one static binary, FROM scratch, as the
// lab imports it: no registry is reachable, and pods never pull.
type Image struct {
	// Ref is the image's name as pods name it (registry.k8s.io/pause:3.10).
	Ref string
	// Binary is the static program's file; it is copied in as Path.
	Binary, Path string
	// Entrypoint is the image's command; empty means Path alone.
	Entrypoint []string
}

// archive writes img as a docker save archive (what ctr images import
// reads) into dir and returns its path.
func (img Image) archive(dir string) (string, error) {
	bin, err := os.ReadFile(img.Binary)
	if err != nil {
		return "", err
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	now := time.Unix(0, 0)
	// The parent directory first, as image layers have it (Path is
	// /name or /dir/name).
	if d := path.Dir(img.Path); d != "/" {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: now}); err != nil {
			return "", err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: img.Path[1:], Mode: 0o755, Size: int64(len(bin)), ModTime: now}); err != nil {
		return "", err
	}
	if _, err := tw.Write(bin); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	entry := img.Entrypoint
	if len(entry) == 0 {
		entry = []string{img.Path}
	}
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH, "os": "linux", "created": now.UTC().Format(time.RFC3339),
		"config": map[string]any{"Entrypoint": entry, "Env": []string{"PATH=/bin:/"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(layerSum[:])}},
	})
	if err != nil {
		return "", err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{img.Ref}, "Layers": []string{"layer.tar"},
	}})
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, fmt.Sprintf("image-%x.tar", configSum[:6]))
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	aw := tar.NewWriter(f)
	for _, file := range []struct {
		name string
		data []byte
	}{{"layer.tar", layer.Bytes()}, {configName, config}, {"manifest.json", manifest}} {
		if err := aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: file.name, Mode: 0o644, Size: int64(len(file.data)), ModTime: now}); err != nil {
			return "", err
		}
		if _, err := aw.Write(file.data); err != nil {
			return "", err
		}
	}
	if err := aw.Close(); err != nil {
		return "", err
	}
	return out, f.Close()
}
