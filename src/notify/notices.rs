//! TheHive's account-change emails (since 5.2): the password was changed, the password was
//! reset, the email address was changed (told to the old and the new address).

use crate::mail::template::Builtin;

/// Which account change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// The password was changed.
    PasswordChanged,
    /// The password was reset.
    PasswordReset,
    /// The email address was changed.
    EmailChanged,
}

impl NoticeKind {
    /// The built-in email of this notice.
    pub fn email(self) -> &'static Builtin {
        match self {
            NoticeKind::PasswordChanged => &PASSWORD_CHANGED,
            NoticeKind::PasswordReset => &PASSWORD_RESET,
            NoticeKind::EmailChanged => &EMAIL_CHANGED,
        }
    }
}

const PASSWORD_CHANGED: Builtin = Builtin {
    subject: "Your password was changed",
    text: "Hello {{name}},\n\n\
           The password of your account {{login}} was changed on {{time}}.\n\
           If you did not change it, contact your administrator at once.\n",
    html: "<p>Hello {{name}},</p>\
           <p>The password of your account <b>{{login}}</b> was changed on {{time}}.</p>\
           <p>If you did not change it, contact your administrator at once.</p>",
};

const PASSWORD_RESET: Builtin = Builtin {
    subject: "Your password was reset",
    text: "Hello {{name}},\n\n\
           The password of your account {{login}} was reset on {{time}}.\n\
           If you did not ask for this, contact your administrator at once.\n",
    html: "<p>Hello {{name}},</p>\
           <p>The password of your account <b>{{login}}</b> was reset on {{time}}.</p>\
           <p>If you did not ask for this, contact your administrator at once.</p>",
};

const EMAIL_CHANGED: Builtin = Builtin {
    subject: "Your email address was changed",
    text: "Hello {{name}},\n\n\
           The email address of your account {{login}} was changed on {{time}}\n\
           from {{previous}} to {{current}}.\n\
           If you did not change it, contact your administrator at once.\n",
    html: "<p>Hello {{name}},</p>\
           <p>The email address of your account <b>{{login}}</b> was changed on {{time}} \
           from {{previous}} to {{current}}.</p>\
           <p>If you did not change it, contact your administrator at once.</p>",
};
