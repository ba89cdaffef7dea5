/**
 * Who owns what, for one tenant. Containers, networks and volumes carry the tenant label (set by
 * the guard at create); image tags are one global namespace and image labels are inherited, so
 * tags (and the image IDs a tenant built) are tracked in the guard's own state.
 */
import { LABEL_TENANT } from '../common/index.js';

/** Normalises an image reference to `repo:tag` as RepoTags shows it (docker.io/library/ stripped). */
export function normalizeTag(ref: string): string {
  let r = ref.trim();
  if (r.includes('@')) return r; // digest reference, not a tag
  r = r
    .replace(/^docker\.io\/library\//, '')
    .replace(/^docker\.io\//, '')
    .replace(/^index\.docker\.io\/library\//, '');
  const lastSlash = r.lastIndexOf('/');
  const lastColon = r.lastIndexOf(':');
  return lastColon > lastSlash ? r : `${r}:latest`;
}

/** Whether a reference names an image by ID (full `sha256:…` or a hex prefix) rather than by tag. */
export function isImageId(ref: string): boolean {
  return /^sha256:[0-9a-f]{1,64}$/.test(ref) || /^[0-9a-f]{12,64}$/.test(ref);
}

/**
 * Labels for images the tenant makes (build, commit, import): the guard's labels with the tenant
 * label emptied. Containers inherit image labels, so an image must name no owner.
 */
export function imageLabelsFor(labels: Readonly<Record<string, string>>): Record<string, string> {
  return { ...labels, [LABEL_TENANT]: '' };
}

export function tenantSlug(tenant: string): string {
  return (
    tenant
      .toLowerCase()
      .replace(/[^a-z0-9_.-]+/g, '-')
      .replace(/^[-.]+/, '')
      .slice(0, 48) || 'tenant'
  );
}

export class TenantState {
  /** Containers this guard created (their tenant label is ours even when the image also carries it). */
  readonly containers = new Set<string>();
  readonly tags = new Set<string>();
  readonly builtImages = new Set<string>();
  readonly networks = new Set<string>();
  readonly volumes = new Set<string>();

  constructor(readonly tenant: string) {}

  owns(labels: Record<string, string> | null | undefined): boolean {
    return labels?.[LABEL_TENANT] === this.tenant;
  }

  /**
   * Whether a container is the tenant's. Containers inherit their image's labels, so a container
   * the tenant did not create (a host's, another tenant's) run from an image that carries this
   * tenant's label would look owned. The label counts only when the image does not carry the same
   * value, or when this guard created the container itself.
   */
  ownsContainer(
    id: string,
    labels: Record<string, string> | null | undefined,
    imageLabels: Record<string, string> | null | undefined,
  ): boolean {
    if (!this.owns(labels)) return false;
    return this.containers.has(id) || imageLabels?.[LABEL_TENANT] !== this.tenant;
  }

  ownsTag(ref: string): boolean {
    return this.tags.has(normalizeTag(ref));
  }

  addTag(ref: string): void {
    this.tags.add(normalizeTag(ref));
  }
}
