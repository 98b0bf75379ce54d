//! What a service sets over its image's config, as `docker service create
//! --entrypoint/--user/--workdir` do: the entrypoint (Docker's rule: a
//! replaced entrypoint drops the image's Cmd too), the user its process
//! runs as, and its working directory. Unset, the image's own hold.

use serde::{Deserialize, Serialize};

use super::InvalidField;

/// Bounds, with the command's: a spec stays small whatever a client sends.
pub const USER_BYTES: usize = 256;
pub const WORKDIR_BYTES: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    /// Replaces the image's Entrypoint (an empty one clears it).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `user`, `uid`, `user:group` or `uid:gid`, looked up in the image.
    #[serde(default)]
    pub user: Option<String>,
    /// An absolute path inside the container.
    #[serde(default)]
    pub workdir: Option<String>,
}

impl Overrides {
    /// Checks each field; the first that is wrong is named. Entrypoint
    /// sizes count with the command's (see `limits`), by the caller.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(entrypoint) = &self.entrypoint {
            if entrypoint.iter().any(|a| a.contains('\0')) {
                return Err(InvalidField::new("entrypoint", format!("{entrypoint:?}"), "arguments without NUL bytes"));
            }
        }
        if let Some(user) = &self.user {
            let part = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            let ok = user.len() <= USER_BYTES
                && match user.split_once(':') {
                    Some((u, g)) => part(u) && part(g),
                    None => part(user),
                };
            if !ok {
                return Err(InvalidField::new(
                    "user",
                    user,
                    format!("a user or uid, optionally :group or :gid (letters, digits, '_', '.', '-'; at most {USER_BYTES} bytes)"),
                ));
            }
        }
        if let Some(dir) = &self.workdir {
            if !dir.starts_with('/') || dir.contains('\0') || dir.len() > WORKDIR_BYTES {
                return Err(InvalidField::new(
                    "workdir",
                    dir,
                    format!("an absolute path without NUL bytes, at most {WORKDIR_BYTES} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// The wire's flat fields: whether an entrypoint is set and its
    /// arguments, the user and the working directory (`""` for unset).
    pub fn from_wire(set_entrypoint: bool, entrypoint: Vec<String>, user: String, workdir: String) -> Self {
        Self {
            entrypoint: set_entrypoint.then_some(entrypoint),
            user: Some(user).filter(|u| !u.is_empty()),
            workdir: Some(workdir).filter(|w| !w.is_empty()),
        }
    }

    /// The wire's flat fields, as [`Overrides::from_wire`] takes them.
    pub fn to_wire(&self) -> (bool, Vec<String>, String, String) {
        (
            self.entrypoint.is_some(),
            self.entrypoint.clone().unwrap_or_default(),
            self.user.clone().unwrap_or_default(),
            self.workdir.clone().unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_an_empty_entrypoint_apart_from_none() {
        for o in [
            Overrides::default(),
            Overrides { entrypoint: Some(vec![]), ..Overrides::default() },
            Overrides {
                entrypoint: Some(vec!["sh".into(), "-c".into()]),
                user: Some("1000:1000".into()),
                workdir: Some("/srv".into()),
            },
        ] {
            let (set, args, user, workdir) = o.to_wire();
            assert_eq!(Overrides::from_wire(set, args, user, workdir), o);
        }
    }

    #[test]
    fn bad_values_are_named() {
        let field = |o: Overrides| o.validate().unwrap_err().field;
        assert_eq!(field(Overrides { entrypoint: Some(vec!["a\0".into()]), ..Default::default() }), "entrypoint");
        for user in ["", ":", "a:", "root user", "a:b:c", "$(id)"] {
            assert_eq!(field(Overrides { user: Some(user.into()), ..Default::default() }), "user", "{user:?}");
        }
        for dir in ["srv", "", "/a\0"] {
            assert_eq!(field(Overrides { workdir: Some(dir.into()), ..Default::default() }), "workdir", "{dir:?}");
        }
        let good = Overrides {
            entrypoint: Some(vec!["redis-cli".into()]),
            user: Some("www-data:adm".into()),
            workdir: Some("/var/www".into()),
        };
        assert_eq!(good.validate(), Ok(()));
    }
}
