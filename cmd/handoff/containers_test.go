package main

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// fencedBlocks returns the fenced code blocks of a markdown text with the
// given language.
func fencedBlocks(md, lang string) []string {
	var out []string
	var cur []string
	in := false
	for _, line := range strings.Split(md, "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```"+lang:
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			out = append(out, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	return out
}

// dockerfileCommand reads the exec-form ENTRYPOINT and CMD of a Dockerfile.
func dockerfileCommand(t *testing.T, dockerfile string) (entrypoint, cmd []string) {
	t.Helper()
	for _, line := range strings.Split(dockerfile, "\n") {
		kw, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		var dst *[]string
		switch kw {
		case "ENTRYPOINT":
			dst = &entrypoint
		case "CMD":
			dst = &cmd
		default:
			continue
		}
		if err := json.Unmarshal([]byte(rest), dst); err != nil {
			t.Fatalf("%s is not in exec form (a JSON array): %q: %v", kw, line, err)
		}
	}
	return entrypoint, cmd
}

type deployment struct {
	Kind string
	Spec struct {
		Strategy struct {
			RollingUpdate struct {
				MaxUnavailable int `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		}
		Template struct {
			Spec struct {
				Grace      int `yaml:"terminationGracePeriodSeconds"`
				Containers []struct {
					Command []string
					Args    []string
					Ports   []struct {
						Name          string
						ContainerPort int `yaml:"containerPort"`
					}
					ReadinessProbe probe `yaml:"readinessProbe"`
					LivenessProbe  probe `yaml:"livenessProbe"`
					Lifecycle      struct {
						PreStop struct {
							Sleep struct{ Seconds int }
						} `yaml:"preStop"`
					}
				}
			}
		}
	}
}

type probe struct {
	HTTPGet struct {
		Path string
		Port string
	} `yaml:"httpGet"`
}

var helpFlag = regexp.MustCompile(`(?m)^  (--[a-z-]+)`)

// docs/containers.md: the Deployment names only flags handoff has, with
// values it accepts; its probes are /readyz and /healthz on the --metrics
// port; its grace period outlasts preStop and --drain-timeout; and the
// Dockerfile runs exactly what the Deployment's args say, as PID 1.
func TestContainersDoc(t *testing.T) {
	b, err := os.ReadFile("../../docs/containers.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	var help bytes.Buffer
	parseRun([]string{"--help"}, &help)
	known := map[string]bool{}
	for _, m := range helpFlag.FindAllStringSubmatch(help.String(), -1) {
		known[m[1]] = true
	}

	yamls := fencedBlocks(doc, "yaml")
	if len(yamls) != 1 {
		t.Fatalf("%d yaml blocks in docs/containers.md, want the Deployment alone", len(yamls))
	}
	var d deployment
	dec := yaml.NewDecoder(strings.NewReader(yamls[0]))
	dec.KnownFields(false)
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("the manifest does not parse: %v", err)
	}
	if d.Kind != "Deployment" || len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("the manifest is not a Deployment of one container: %+v", d)
	}
	if d.Spec.Strategy.RollingUpdate.MaxUnavailable != 0 {
		t.Errorf("maxUnavailable %d: a rolling update would take serving pods away first", d.Spec.Strategy.RollingUpdate.MaxUnavailable)
	}
	c := d.Spec.Template.Spec.Containers[0]
	args := c.Args
	end := slices.Index(args, "--")
	if end < 0 || end == len(args)-1 {
		t.Fatalf("args %q: no -- COMMAND", args)
	}
	for _, a := range args[:end] {
		if name, _, _ := strings.Cut(a, "="); strings.HasPrefix(a, "--") && !known[name] {
			t.Errorf("the manifest names %s, which 'handoff run --help' does not have", name)
		}
	}
	cfg, _, err := parseRun(args, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("handoff run %q: %v", args, err)
	}
	if !strings.HasPrefix(args[end+1], "/") {
		t.Errorf("COMMAND %q: give the program's absolute path in the image", args[end+1])
	}

	// Ports: the probes go to --metrics, the Service to --listen.
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	portOf := func(addr string) int {
		_, p, _ := strings.Cut(addr, ":")
		n, _ := strconv.Atoi(p)
		return n
	}
	if len(cfg.Listeners) != 1 || ports["http"] != portOf(cfg.Listeners[0].Address) {
		t.Errorf("containerPort http %d is not --listen %v", ports["http"], cfg.Listeners)
	}
	for name, pr := range map[string]probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if pr.HTTPGet.Path != name {
			t.Errorf("probe path %q, want %s", pr.HTTPGet.Path, name)
		}
		if ports[pr.HTTPGet.Port] != portOf(cfg.Metrics) || cfg.Metrics == "" {
			t.Errorf("probe %s on port %q (%d), not on --metrics %q", name, pr.HTTPGet.Port, ports[pr.HTTPGet.Port], cfg.Metrics)
		}
	}
	grace := time.Duration(d.Spec.Template.Spec.Grace) * time.Second
	preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	if grace <= preStop+cfg.DrainTimeout {
		t.Errorf("terminationGracePeriodSeconds %v is not above preStop %v + --drain-timeout %v", grace, preStop, cfg.DrainTimeout)
	}
	if cfg.DrainTimeout == 30*time.Second {
		t.Errorf("the manifest leaves --drain-timeout at its default: say it next to the grace period")
	}

	// The Dockerfile runs the same command, as PID 1 (exec form).
	dockerfiles := fencedBlocks(doc, "dockerfile")
	if len(dockerfiles) != 1 {
		t.Fatalf("%d dockerfile blocks, want 1", len(dockerfiles))
	}
	entry, cmd := dockerfileCommand(t, dockerfiles[0])
	if len(entry) != 2 || !strings.HasSuffix(entry[0], "/handoff") || entry[1] != "run" {
		t.Errorf("ENTRYPOINT %q, want [\".../handoff\", \"run\"]", entry)
	}
	if !slices.Equal(cmd, args) {
		t.Errorf("the Dockerfile's CMD %q and the Deployment's args %q differ", cmd, args)
	}
	if !strings.Contains(dockerfiles[0], "COPY --from=build /out/server "+args[end+1]) {
		t.Errorf("the Dockerfile does not put the program at %s", args[end+1])
	}
}
