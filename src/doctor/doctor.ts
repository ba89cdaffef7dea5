import { errorMessage } from '../common/index.js';
import type { DockerClient } from '../engine/index.js';
import { images, system } from '../engine/index.js';
import { cgroupInfo, iptablesMode, probePrivileges } from './probe.js';
import type { DoctorReport } from './report.js';
import { verdicts } from './report.js';

export const DIND_IMAGE = 'berth-local/dind';

export async function runDoctor(client: DockerClient): Promise<DoctorReport> {
  const base: Omit<DoctorReport, 'modes'> = {
    engine: { reachable: false, endpoint: client.endpoint.url },
    runtimes: [],
    sysbox: false,
    iptables: iptablesMode(),
    dindImage: { name: DIND_IMAGE, present: false },
  };
  try {
    const [version, info] = await Promise.all([system(client).version(), system(client).info()]);
    base.engine = {
      reachable: true,
      endpoint: client.endpoint.url,
      version: version.Version,
      apiVersion: version.ApiVersion,
    };
    base.storageDriver = info.Driver;
    base.cgroup = cgroupInfo(info);
    base.runtimes = Object.keys(info.Runtimes).sort();
    base.sysbox = base.runtimes.includes('sysbox-runc');
    base.privileges = await probePrivileges(client, true);
    base.dindImage.present = (await images(client).find(DIND_IMAGE)) !== undefined;
  } catch (err) {
    if (!base.engine.reachable) base.engine.error = errorMessage(err);
    else throw err;
  }
  return { ...base, modes: verdicts(base) };
}
