use std::fs;
use std::io::Write;
use std::path::Path;

use oci_spec::runtime::LinuxDeviceCgroup;

use super::controller::Controller;
use crate::common::{self, ControllerOpt, WrappedIoError, default_allow_devices, default_devices};

pub struct Devices {}

impl Controller for Devices {
    type Error = WrappedIoError;
    type Resource = ();

    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error> {
        tracing::debug!("Apply Devices cgroup config");

        // `devices.allow` and `devices.deny` are opened once each and take one rule per
        // write, in the rules' order (a container's fifteen-odd rules were an open, a write and
        // a close of a long cgroup path each).
        let mut files = RuleFiles::new(cgroup_root);
        if let Some(devices) = controller_opt.resources.devices().as_ref() {
            for d in devices {
                files.write(d)?;
            }
        }

        for d in [
            default_devices().iter().map(|d| d.into()).collect(),
            default_allow_devices(),
        ]
        .concat()
        {
            files.write(&d)?;
        }

        Ok(())
    }

    // always needs to be called due to default devices
    fn needs_to_handle<'a>(_controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource> {
        Some(&())
    }
}

/// A cgroup's `devices.allow` and `devices.deny`, each opened at its first rule.
struct RuleFiles<'a> {
    cgroup_root: &'a Path,
    allow: Option<fs::File>,
    deny: Option<fs::File>,
}

impl<'a> RuleFiles<'a> {
    fn new(cgroup_root: &'a Path) -> Self {
        RuleFiles {
            cgroup_root,
            allow: None,
            deny: None,
        }
    }

    /// Writes `device`'s rule, as one write, to the file its access goes to.
    fn write(&mut self, device: &LinuxDeviceCgroup) -> Result<(), WrappedIoError> {
        let (slot, name) = if device.allow() {
            (&mut self.allow, "devices.allow")
        } else {
            (&mut self.deny, "devices.deny")
        };
        let path = self.cgroup_root.join(name);
        let file = match slot {
            Some(file) => file,
            None => slot.insert(common::open_cgroup_file_for_writing(&path)?),
        };
        let rule = device.to_string();
        // One rule per write: the kernel parses each write as a rule, so it must not be split.
        file.write(rule.as_bytes())
            .and_then(|written| {
                (written == rule.len())
                    .then_some(())
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::WriteZero))
            })
            .map_err(|err| WrappedIoError::Write {
                err,
                path,
                data: rule,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::fs::read_to_string;

    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};

    use super::*;
    use crate::test::set_fixture;

    #[test]
    fn test_set_default_devices() {
        let tmp = tempfile::tempdir().unwrap();

        default_allow_devices().iter().for_each(|d| {
            // NOTE: We reset the fixtures every iteration because files aren't appended
            // so what happens in the tests is you get strange overwrites which can contain
            // remaining bytes from the last iteration. Resetting the files more appropriately
            // mocks the behavior of cgroup files.
            set_fixture(tmp.path(), "devices.allow", "").expect("create allowed devices list");
            set_fixture(tmp.path(), "devices.deny", "").expect("create denied devices list");

            RuleFiles::new(tmp.path())
                .write(d)
                .expect("Apply default device");
            println!("Device: {}", d);
            if d.allow() {
                let allowed_content =
                    read_to_string(tmp.path().join("devices.allow")).expect("read to string");
                assert_eq!(allowed_content, d.to_string());
            } else {
                let denied_content =
                    read_to_string(tmp.path().join("devices.deny")).expect("read to string");
                assert_eq!(denied_content, d.to_string());
            }
        });
    }

    #[test]
    fn test_set_mock_devices() {
        let tmp = tempfile::tempdir().unwrap();
        [
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(10)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::A)
                .minor(200)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .typ(LinuxDeviceType::P)
                .major(10)
                .minor(200)
                .access("m")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .typ(LinuxDeviceType::U)
                .access("rw")
                .build()
                .unwrap(),
        ]
        .iter()
        .for_each(|d| {
            set_fixture(tmp.path(), "devices.allow", "").expect("create allowed devices list");
            set_fixture(tmp.path(), "devices.deny", "").expect("create denied devices list");

            RuleFiles::new(tmp.path())
                .write(d)
                .expect("Apply default device");
            println!("Device: {}", d);
            if d.allow() {
                let allowed_content =
                    read_to_string(tmp.path().join("devices.allow")).expect("read to string");
                assert_eq!(allowed_content, d.to_string());
            } else {
                let denied_content =
                    read_to_string(tmp.path().join("devices.deny")).expect("read to string");
                assert_eq!(denied_content, d.to_string());
            }
        });
    }

    quickcheck! {
        fn property_test_apply_device(device: LinuxDeviceCgroup) -> bool {
            let tmp = tempfile::tempdir().unwrap();
            set_fixture(tmp.path(), "devices.allow", "").expect("create allowed devices list");
            set_fixture(tmp.path(), "devices.deny", "").expect("create denied devices list");
            RuleFiles::new(tmp.path()).write(&device).expect("Apply default device");
            if device.allow() {
                let allowed_content =
                    read_to_string(tmp.path().join("devices.allow")).expect("read to string");
                allowed_content == device.to_string()
            } else {
                let denied_content =
                    read_to_string(tmp.path().join("devices.deny")).expect("read to string");
                denied_content == device.to_string()
            }
        }

        fn property_test_apply_multiple_devices(devices: Vec<LinuxDeviceCgroup>) -> bool {
            let tmp = tempfile::tempdir().unwrap();
            devices.iter()
                .all(|device| {
                    set_fixture(tmp.path(), "devices.allow", "").expect("create allowed devices list");
                    set_fixture(tmp.path(), "devices.deny", "").expect("create denied devices list");
                    RuleFiles::new(tmp.path()).write(device).expect("Apply default device");
                    if device.allow() {
                        let allowed_content =
                            read_to_string(tmp.path().join("devices.allow")).expect("read to string");
                        allowed_content == device.to_string()
                    } else {
                        let denied_content =
                            read_to_string(tmp.path().join("devices.deny")).expect("read to string");
                        denied_content == device.to_string()
                    }
                })
        }
    }

    /// Every rule reaches its file, one write each, in order (a regular file here appends
    /// them; the kernel's file parses each write as one rule).
    #[test]
    fn rules_share_one_open_file_each() {
        let tmp = tempfile::tempdir().unwrap();
        set_fixture(tmp.path(), "devices.allow", "").expect("allow");
        set_fixture(tmp.path(), "devices.deny", "").expect("deny");
        let rule = |allow: bool, major: i64| {
            LinuxDeviceCgroupBuilder::default()
                .allow(allow)
                .typ(LinuxDeviceType::C)
                .major(major)
                .minor(1)
                .access("rwm")
                .build()
                .unwrap()
        };
        let mut files = RuleFiles::new(tmp.path());
        for device in [rule(false, 1), rule(true, 2), rule(true, 3), rule(false, 4)] {
            files.write(&device).expect("write");
        }
        drop(files);
        let allowed = read_to_string(tmp.path().join("devices.allow")).unwrap();
        let denied = read_to_string(tmp.path().join("devices.deny")).unwrap();
        assert_eq!(allowed, format!("{}{}", rule(true, 2), rule(true, 3)));
        assert_eq!(denied, format!("{}{}", rule(false, 1), rule(false, 4)));

        // A cgroup without the files: the error names the file.
        let missing = tmp.path().join("missing");
        let err = RuleFiles::new(&missing).write(&rule(true, 2)).unwrap_err();
        assert!(format!("{err}").contains("devices.allow"), "{err}");
    }
}
